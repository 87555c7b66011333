/*-------------------------------------------------------------------------
 *
 * lhdiscord.c
 *	  Module entry point.
 *
 * Owns _PG_init: it defines the configuration parameters (config.c) and,
 * when the library is loaded through shared_preload_libraries, the shared
 * state and the background workers (the outbox worker, and the Gateway
 * worker when lhdiscord.gateway is on).  Loaded any other way (CREATE EXTENSION,
 * a function call) every SQL function that does not need the worker still
 * works.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "fmgr.h"
#include "miscadmin.h"

#include "lhdiscord.h"
#include "lhd_shared.h"

PG_MODULE_MAGIC;

void		_PG_init(void);

void
_PG_init(void)
{
	lhd_define_gucs();
	lhd_shared_init();
	lhd_register_worker();
	lhd_register_gateway();
}
