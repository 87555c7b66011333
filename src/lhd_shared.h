/*-------------------------------------------------------------------------
 *
 * lhd_shared.h
 *	  State shared by the worker and the sessions (implemented in shmem.c).
 *
 *-------------------------------------------------------------------------
 */
#ifndef LHD_SHARED_H
#define LHD_SHARED_H

#include "port/atomics.h"
#include "storage/latch.h"
#include "storage/spin.h"
#include "utils/timestamp.h"

#define LHD_ERROR_LEN 512

/* The Gateway worker's state (gateway.c), shown by worker_status. */
typedef struct LhdGatewayStatus
{
	int			pid;			/* 0 while no Gateway worker runs */
	char		state[16];		/* connecting, identifying, resuming, connected, backoff, stopped */
	bool		seeded;			/* the member listing of this session is complete */
	int64		snapshot_id;	/* the live member snapshot, 0 = none */
	TimestampTz connected_at;	/* READY or RESUMED of the current session */
	TimestampTz last_event_at;	/* last member event or heartbeat ACK */
	long long	seq;			/* last sequence number */
	int64		events;			/* member events applied */
	int64		resumes;		/* sessions resumed */
	int64		reconnects;		/* connections after the first */
	int64		identifies;		/* IDENTIFY sent */
	char		alarm[256];		/* why it stopped reconnecting, and the fix */
} LhdGatewayStatus;

typedef struct LhdShared
{
	/* Protected by mutex. */
	slock_t		mutex;
	Latch	   *worker_latch;	/* NULL while no worker runs */
	Oid			worker_dboid;	/* the database it serves */
	int			worker_pid;
	TimestampTz worker_started_at;
	TimestampTz last_activity_at;
	bool		paused;			/* 401 (or no token): nothing is sent */
	char		pause_reason[256];
	TimestampTz paused_at;
	int			invalid_10min;	/* 401/403/429 in the last 10 minutes */
	bool		throttled;		/* slowed down to stay far from a ban */
	char		last_error[LHD_ERROR_LEN];
	TimestampTz last_error_at;
	TimestampTz failing_since;	/* first of the current run of transient failures */
	bool		recovered;		/* Discord answered again: retries are due now */
	TimestampTz rate_limited_until;	/* a pending global 429 wait, or 0 */
	char		serving_lane[16];	/* highest lane of the last claim */
	bool		token_verified; /* the probe accepted the current bot token */
	LhdGatewayStatus gateway;

	/* Counters (atomics, no lock). */
	pg_atomic_uint64 calls;
	pg_atomic_uint64 responses_2xx;
	pg_atomic_uint64 responses_4xx;
	pg_atomic_uint64 responses_5xx;
	pg_atomic_uint64 transport_errors;
	pg_atomic_uint64 rate_limited;
	pg_atomic_uint64 jobs_finished;
	pg_atomic_uint64 worker_errors;	/* ERRORs the worker recovered from */
} LhdShared;

extern LhdShared *lhd_shared;

extern void lhd_shared_init(void);
extern void lhd_wake_worker(void);
extern void lhd_set_last_error(const char *fmt,...) pg_attribute_printf(1, 2);
extern void lhd_set_paused(bool paused, const char *reason);
extern bool lhd_is_paused(void);
extern void lhd_count_call(void);
extern void lhd_count_response(long status);
extern void lhd_set_invalid_count(int count, bool throttled);
extern void lhd_worker_register(Latch *latch);
extern void lhd_worker_touch(void);
extern void lhd_note_discord_answer(bool answered);
extern bool lhd_take_recovered(void);
extern bool lhd_discord_failing(void);
extern void lhd_set_rate_limited_until(TimestampTz until);
extern void lhd_set_serving_lane(const char *lane);
extern void lhd_set_token_verified(bool verified);
extern void lhd_gateway_publish(const LhdGatewayStatus *status);

#endif							/* LHD_SHARED_H */
