/*-------------------------------------------------------------------------
 *
 * lhd_bgw.h
 *	  What the background workers share (implemented in bgw.c).
 *
 *-------------------------------------------------------------------------
 */
#ifndef LHD_BGW_H
#define LHD_BGW_H

#include "utils/memutils.h"

/* Set by each worker when it starts. */
extern MemoryContext lhd_bgw_cxt;	/* for the process's life */
extern const char *lhd_bgw_name;	/* "lhdiscord worker", in log messages */
extern const char *lhd_bgw_kind;	/* "worker", in worker_status.last_error */

extern void lhd_bgw_session_settings(void);
extern void lhd_bgw_in_transaction(void (*fn) (void *), void *arg);
extern bool lhd_bgw_protected_unit(void (*fn) (void *), void *arg, const char *what);
extern void lhd_bgw_note_error(const char *what, const char *message);
extern bool lhd_bgw_extension_ready(void);
extern void lhd_bgw_recheck_extension(void);
extern void lhd_bgw_wait_latch(int64 ms);
extern void lhd_bgw_recover_begin(const char *what);

#endif							/* LHD_BGW_H */
