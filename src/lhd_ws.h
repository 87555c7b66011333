/*-------------------------------------------------------------------------
 *
 * lhd_ws.h
 *	  The WebSocket client wrapper's interface (implemented in ws.c over
 *	  libwebsockets).
 *
 * One client connection per LhdWs, each with its own libwebsockets context.
 * The wrapper never blocks for long and never raises: the caller drives it
 * with lhd_ws_service() from its own loop (a bounded wait, interrupted by
 * signals), reads complete text messages with lhd_ws_receive() and queues
 * messages with lhd_ws_send().  Only plain C types cross this boundary (no
 * PostgreSQL headers on either side of ws.c); memory is malloc'd.
 *
 *-------------------------------------------------------------------------
 */
#ifndef LHD_WS_H
#define LHD_WS_H

#include <stdbool.h>
#include <stddef.h>

typedef struct LhdWs LhdWs;

typedef enum LhdWsState
{
	LHD_WS_CONNECTING,			/* TCP, TLS and the HTTP upgrade under way */
	LHD_WS_OPEN,				/* messages flow */
	LHD_WS_CLOSED				/* closed by either side, or never opened */
} LhdWsState;

/* Where the library's own warnings and errors go (one line each). */
typedef void (*LhdWsLogFn) (const char *line);

/*
 * Start connecting to a ws:// or wss:// URL.  Messages longer than
 * max_message bytes close the connection (1009).  Returns NULL with a
 * reason in err when the URL is malformed or no connection could be
 * started.
 */
extern LhdWs *lhd_ws_connect(const char *url, size_t max_message, LhdWsLogFn log,
							 char *err, size_t errlen);

/* Serve the connection: wait at most max_wait_ms (a signal ends it early). */
extern void lhd_ws_service(LhdWs *ws, int max_wait_ms);

extern LhdWsState lhd_ws_state(const LhdWs *ws);

/*
 * Once closed: the close code the server sent (0 when the connection ended
 * without a close frame), its reason, and why the connection failed when it
 * never opened ("" otherwise).
 */
extern int	lhd_ws_close_code(const LhdWs *ws);
extern const char *lhd_ws_close_reason(const LhdWs *ws);
extern const char *lhd_ws_error(const LhdWs *ws);

/*
 * The next complete text message received, NUL-terminated (len excludes
 * the NUL), or NULL when none is waiting.  The caller free()s it.
 */
extern char *lhd_ws_receive(LhdWs *ws, size_t *len);

/* Is a complete message waiting for lhd_ws_receive()? */
extern bool lhd_ws_has_message(const LhdWs *ws);

/* Queue a text message; false when the connection is not open. */
extern bool lhd_ws_send(LhdWs *ws, const char *data, size_t len);

/* Messages queued and not yet written to the socket. */
extern int	lhd_ws_pending_sends(const LhdWs *ws);

/* Start a clean close with this code (the peer is told with a close frame). */
extern void lhd_ws_close(LhdWs *ws, int code);

/* Drop the connection at once and free everything (NULL is fine). */
extern void lhd_ws_free(LhdWs *ws);

#endif							/* LHD_WS_H */
