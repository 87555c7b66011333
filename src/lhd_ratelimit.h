/*-------------------------------------------------------------------------
 *
 * lhd_ratelimit.h
 *	  Request pacing (implemented in ratelimit.c).
 *
 *-------------------------------------------------------------------------
 */
#ifndef LHD_RATELIMIT_H
#define LHD_RATELIMIT_H

/* "Wait for an outstanding response" (the poll timeout then applies). */
#define LHD_LIMIT_WAIT_RESPONSE 50

typedef struct LhdRateHeaders
{
	char		bucket[128];	/* X-RateLimit-Bucket, or "" */
	int			limit;			/* X-RateLimit-Limit */
	int			remaining;		/* X-RateLimit-Remaining */
	bool		has_remaining;
	double		reset_after;	/* X-RateLimit-Reset-After (s) */
	bool		has_reset_after;
	double		retry_after;	/* 429 body retry_after, else Retry-After (s) */
	bool		global;			/* X-RateLimit-Global or body "global" */
	bool		shared_scope;	/* X-RateLimit-Scope: shared */
} LhdRateHeaders;

typedef struct LhdLimiter LhdLimiter;

extern LhdLimiter *lhd_limiter_create(MemoryContext cxt);
extern int64 lhd_limiter_delay(LhdLimiter *l, const char *route, const char *major, int64 now_ms);
extern void lhd_limiter_sent(LhdLimiter *l, const char *route, const char *major, int64 now_ms);
extern void lhd_limiter_response(LhdLimiter *l, const char *route, const char *major,
								 const LhdRateHeaders *h, long status, int64 now_ms, bool count);
extern void lhd_limiter_abandoned(LhdLimiter *l, const char *route, const char *major);
extern void lhd_limiter_forget_inflight(LhdLimiter *l);
extern int	lhd_limiter_invalid_count(LhdLimiter *l, int64 now_ms);
extern void lhd_limiter_clear_waits(LhdLimiter *l, int64 now_ms);
extern int64 lhd_limiter_blocked_until(LhdLimiter *l, int64 now_ms);

#endif							/* LHD_RATELIMIT_H */
