/*-------------------------------------------------------------------------
 *
 * shmem.c
 *	  Shared state between the worker and the sessions: wake-up, pause, stats.
 *
 * Owns the shared-memory segment (requested only under
 * shared_preload_libraries), the wake-on-commit mechanism (a transaction
 * that queued outbox work sets the worker's latch when it commits, never
 * when it aborts), the 401 pause flag, the request counters and the last
 * error shown by lhdiscord.worker_status.  Without preloading, the same
 * state lives in process-local memory so the code paths stay the same.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/htup_details.h"
#include "access/xact.h"
#include "fmgr.h"
#include "funcapi.h"
#include "miscadmin.h"
#include "storage/ipc.h"
#include "storage/latch.h"
#include "storage/lwlock.h"
#include "storage/shmem.h"
#include "storage/spin.h"
#include "utils/builtins.h"
#include "utils/timestamp.h"

#include "lhdiscord.h"
#include "lhd_shared.h"

PG_FUNCTION_INFO_V1(worker_state);
PG_FUNCTION_INFO_V1(gateway_state);
PG_FUNCTION_INFO_V1(outbox_wake);

static LhdShared local_state;
LhdShared  *lhd_shared = &local_state;
static bool shared_is_shmem = false;

static shmem_request_hook_type prev_shmem_request_hook = NULL;
static shmem_startup_hook_type prev_shmem_startup_hook = NULL;

/* Set when this transaction queued work; the commit callback wakes. */
static bool wake_pending = false;

static void
init_state(LhdShared *s)
{
	memset(s, 0, sizeof(LhdShared));
	SpinLockInit(&s->mutex);
	pg_atomic_init_u64(&s->calls, 0);
	pg_atomic_init_u64(&s->responses_2xx, 0);
	pg_atomic_init_u64(&s->responses_4xx, 0);
	pg_atomic_init_u64(&s->responses_5xx, 0);
	pg_atomic_init_u64(&s->transport_errors, 0);
	pg_atomic_init_u64(&s->rate_limited, 0);
	pg_atomic_init_u64(&s->jobs_finished, 0);
	pg_atomic_init_u64(&s->worker_errors, 0);
}

static void
lhd_shmem_request(void)
{
	if (prev_shmem_request_hook)
		prev_shmem_request_hook();
	RequestAddinShmemSpace(MAXALIGN(sizeof(LhdShared)));
}

static void
lhd_shmem_startup(void)
{
	bool		found;
	LhdShared  *s;

	if (prev_shmem_startup_hook)
		prev_shmem_startup_hook();
	LWLockAcquire(AddinShmemInitLock, LW_EXCLUSIVE);
	s = ShmemInitStruct("lhdiscord", sizeof(LhdShared), &found);
	if (!found)
		init_state(s);
	LWLockRelease(AddinShmemInitLock);
	lhd_shared = s;
	shared_is_shmem = true;
}

static void
wake_xact_callback(XactEvent event, void *arg)
{
	switch (event)
	{
		case XACT_EVENT_COMMIT:
		case XACT_EVENT_PARALLEL_COMMIT:
			if (wake_pending)
				lhd_wake_worker();
			wake_pending = false;
			break;
		case XACT_EVENT_ABORT:
		case XACT_EVENT_PARALLEL_ABORT:
			/* A rollback queued nothing: no wake-up. */
			wake_pending = false;
			break;
		case XACT_EVENT_PREPARE:

			/*
			 * Two-phase commit: the jobs become visible at COMMIT PREPARED,
			 * perhaps in another session, which cannot know; the worker's
			 * poll (lhdiscord.poll_interval) picks them up.  The flag must
			 * not leak into this session's next transaction.
			 */
			wake_pending = false;
			break;
		default:
			break;
	}
}

/* Called from _PG_init. */
void
lhd_shared_init(void)
{
	init_state(&local_state);
	if (process_shared_preload_libraries_in_progress)
	{
		prev_shmem_request_hook = shmem_request_hook;
		shmem_request_hook = lhd_shmem_request;
		prev_shmem_startup_hook = shmem_startup_hook;
		shmem_startup_hook = lhd_shmem_startup;
	}
	RegisterXactCallback(wake_xact_callback, NULL);
}

/* Remember to wake the worker when the current transaction commits. */
void
lhd_request_worker_wake(void)
{
	wake_pending = true;
}

/*
 * Wake the worker, if it serves this database: commits in other databases
 * that use the extension are none of its business.
 */
void
lhd_wake_worker(void)
{
	Latch	   *latch;
	Oid			dboid;

	if (!shared_is_shmem)
		return;
	SpinLockAcquire(&lhd_shared->mutex);
	latch = lhd_shared->worker_latch;
	dboid = lhd_shared->worker_dboid;
	SpinLockRelease(&lhd_shared->mutex);
	if (latch && dboid == MyDatabaseId)
		SetLatch(latch);
}

/*
 * Trigger: AFTER INSERT OR UPDATE ON outbox FOR EACH STATEMENT.  Every path
 * that queues work (functions, triggers, a DBA's INSERT) passes here.
 */
Datum
outbox_wake(PG_FUNCTION_ARGS)
{
	lhd_trigger_require_table(fcinfo, "outbox_wake", "outbox", NULL);
	/* The worker's own bookkeeping needs no wake-up. */
	if (!lhd_am_worker)
		lhd_request_worker_wake();
	return PointerGetDatum(NULL);
}

/* worker_status counters: one call sent (live or fake). */
void
lhd_count_call(void)
{
	pg_atomic_fetch_add_u64(&lhd_shared->calls, 1);
}

/* worker_status counters: one HTTP status received (live or fake). */
void
lhd_count_response(long status)
{
	if (status >= 200 && status < 300)
		pg_atomic_fetch_add_u64(&lhd_shared->responses_2xx, 1);
	else if (status >= 500)
		pg_atomic_fetch_add_u64(&lhd_shared->responses_5xx, 1);
	else
		pg_atomic_fetch_add_u64(&lhd_shared->responses_4xx, 1);
	if (status == 429)
		pg_atomic_fetch_add_u64(&lhd_shared->rate_limited, 1);
}

void
lhd_set_last_error(const char *fmt,...)
{
	char		buf[LHD_ERROR_LEN];
	va_list		args;

	va_start(args, fmt);
	vsnprintf(buf, sizeof(buf), fmt, args);
	va_end(args);
	SpinLockAcquire(&lhd_shared->mutex);
	strlcpy(lhd_shared->last_error, buf, sizeof(lhd_shared->last_error));
	lhd_shared->last_error_at = GetCurrentTimestamp();
	SpinLockRelease(&lhd_shared->mutex);
}

void
lhd_set_paused(bool paused, const char *reason)
{
	SpinLockAcquire(&lhd_shared->mutex);
	lhd_shared->paused = paused;
	strlcpy(lhd_shared->pause_reason, paused && reason ? reason : "",
			sizeof(lhd_shared->pause_reason));
	lhd_shared->paused_at = paused ? GetCurrentTimestamp() : 0;
	SpinLockRelease(&lhd_shared->mutex);
}

bool
lhd_is_paused(void)
{
	bool		paused;

	SpinLockAcquire(&lhd_shared->mutex);
	paused = lhd_shared->paused;
	SpinLockRelease(&lhd_shared->mutex);
	return paused;
}

void
lhd_set_invalid_count(int count, bool throttled)
{
	SpinLockAcquire(&lhd_shared->mutex);
	lhd_shared->invalid_10min = count;
	lhd_shared->throttled = throttled;
	SpinLockRelease(&lhd_shared->mutex);
}

/* The worker announces itself (latch for wake-ups) or leaves. */
void
lhd_worker_register(Latch *latch)
{
	SpinLockAcquire(&lhd_shared->mutex);
	lhd_shared->worker_latch = latch;
	lhd_shared->worker_dboid = latch ? MyDatabaseId : InvalidOid;
	lhd_shared->worker_pid = latch ? MyProcPid : 0;
	lhd_shared->worker_started_at = latch ? GetCurrentTimestamp() : 0;
	SpinLockRelease(&lhd_shared->mutex);
}

/*
 * Discord answered a request (answered: any HTTP response below 500), or
 * did not (a transport error, a 5xx).  The first failure starts the outage
 * clock of worker_status; the first answer after failures ends it and
 * tells the worker to make every waiting retry due at once.
 */
void
lhd_note_discord_answer(bool answered)
{
	SpinLockAcquire(&lhd_shared->mutex);
	if (!answered && lhd_shared->failing_since == 0)
		lhd_shared->failing_since = GetCurrentTimestamp();
	else if (answered && lhd_shared->failing_since != 0)
	{
		lhd_shared->failing_since = 0;
		lhd_shared->recovered = true;
	}
	SpinLockRelease(&lhd_shared->mutex);
}

/* Is Discord failing (no answer since the last transient failure)? */
bool
lhd_discord_failing(void)
{
	bool		failing;

	SpinLockAcquire(&lhd_shared->mutex);
	failing = lhd_shared->failing_since != 0;
	SpinLockRelease(&lhd_shared->mutex);
	return failing;
}

/* Did Discord come back since the last call?  (Clears the flag.) */
bool
lhd_take_recovered(void)
{
	bool		recovered;

	SpinLockAcquire(&lhd_shared->mutex);
	recovered = lhd_shared->recovered;
	lhd_shared->recovered = false;
	SpinLockRelease(&lhd_shared->mutex);
	return recovered;
}

void
lhd_set_serving_lane(const char *lane)
{
	SpinLockAcquire(&lhd_shared->mutex);
	strlcpy(lhd_shared->serving_lane, lane ? lane : "", sizeof(lhd_shared->serving_lane));
	SpinLockRelease(&lhd_shared->mutex);
}

void
lhd_set_token_verified(bool verified)
{
	SpinLockAcquire(&lhd_shared->mutex);
	lhd_shared->token_verified = verified;
	SpinLockRelease(&lhd_shared->mutex);
}

void
lhd_set_rate_limited_until(TimestampTz until)
{
	SpinLockAcquire(&lhd_shared->mutex);
	lhd_shared->rate_limited_until = until;
	SpinLockRelease(&lhd_shared->mutex);
}

/* The Gateway worker's state, as a whole. */
void
lhd_gateway_publish(const LhdGatewayStatus *status)
{
	SpinLockAcquire(&lhd_shared->mutex);
	lhd_shared->gateway = *status;
	SpinLockRelease(&lhd_shared->mutex);
}

void
lhd_worker_touch(void)
{
	SpinLockAcquire(&lhd_shared->mutex);
	lhd_shared->last_activity_at = GetCurrentTimestamp();
	SpinLockRelease(&lhd_shared->mutex);
}

/*
 * worker_state() -> one row: the worker and client state behind the
 * lhdiscord.worker_status view.
 */
Datum
worker_state(PG_FUNCTION_ARGS)
{
	TupleDesc	desc;
	Datum		values[22];
	bool		nulls[22];
	LhdShared	copy;

	if (get_call_result_type(fcinfo, NULL, &desc) != TYPEFUNC_COMPOSITE)
		elog(ERROR, "worker_state: return type must be a row type");
	desc = BlessTupleDesc(desc);

	SpinLockAcquire(&lhd_shared->mutex);
	memcpy(&copy, lhd_shared, offsetof(LhdShared, calls));
	SpinLockRelease(&lhd_shared->mutex);

	memset(nulls, 0, sizeof(nulls));
	values[0] = BoolGetDatum(copy.worker_pid != 0);
	values[1] = Int32GetDatum(copy.worker_pid);
	nulls[1] = copy.worker_pid == 0;
	values[2] = TimestampTzGetDatum(copy.worker_started_at);
	nulls[2] = copy.worker_started_at == 0;
	values[3] = TimestampTzGetDatum(copy.last_activity_at);
	nulls[3] = copy.last_activity_at == 0;
	values[4] = BoolGetDatum(copy.paused);
	values[5] = CStringGetTextDatum(copy.pause_reason);
	nulls[5] = copy.pause_reason[0] == '\0';
	values[6] = Int64GetDatum((int64) pg_atomic_read_u64(&lhd_shared->calls));
	values[7] = Int64GetDatum((int64) pg_atomic_read_u64(&lhd_shared->responses_2xx));
	values[8] = Int64GetDatum((int64) pg_atomic_read_u64(&lhd_shared->responses_4xx));
	values[9] = Int64GetDatum((int64) pg_atomic_read_u64(&lhd_shared->responses_5xx));
	values[10] = Int64GetDatum((int64) pg_atomic_read_u64(&lhd_shared->rate_limited));
	values[11] = Int64GetDatum((int64) pg_atomic_read_u64(&lhd_shared->transport_errors));
	values[12] = Int32GetDatum(copy.invalid_10min);
	values[13] = BoolGetDatum(copy.throttled);
	values[14] = CStringGetTextDatum(copy.last_error);
	nulls[14] = copy.last_error[0] == '\0';
	values[15] = TimestampTzGetDatum(copy.last_error_at);
	nulls[15] = copy.last_error_at == 0;
	values[16] = BoolGetDatum(shared_is_shmem);
	/* Added in 0.6.0; an older SQL definition simply has fewer columns. */
	values[17] = TimestampTzGetDatum(copy.failing_since);
	nulls[17] = copy.failing_since == 0;
	values[18] = TimestampTzGetDatum(copy.rate_limited_until);
	nulls[18] = copy.rate_limited_until == 0 || copy.rate_limited_until <= GetCurrentTimestamp();
	values[19] = Int64GetDatum((int64) pg_atomic_read_u64(&lhd_shared->worker_errors));
	values[20] = CStringGetTextDatum(copy.serving_lane);
	nulls[20] = copy.serving_lane[0] == '\0';
	values[21] = BoolGetDatum(copy.token_verified);
	Assert(desc->natts <= lengthof(values));
	PG_RETURN_DATUM(HeapTupleGetDatum(heap_form_tuple(desc, values, nulls)));
}

/*
 * gateway_state() -> one row: the Gateway worker's state, for the gateway
 * columns of lhdiscord.worker_status.
 */
Datum
gateway_state(PG_FUNCTION_ARGS)
{
	TupleDesc	desc;
	Datum		values[12];
	bool		nulls[12];
	LhdGatewayStatus g;

	if (get_call_result_type(fcinfo, NULL, &desc) != TYPEFUNC_COMPOSITE)
		elog(ERROR, "gateway_state: return type must be a row type");
	desc = BlessTupleDesc(desc);

	SpinLockAcquire(&lhd_shared->mutex);
	g = lhd_shared->gateway;
	SpinLockRelease(&lhd_shared->mutex);

	memset(nulls, 0, sizeof(nulls));
	values[0] = BoolGetDatum(lhd_gateway_enabled);
	values[1] = Int32GetDatum(g.pid);
	nulls[1] = g.pid == 0;
	values[2] = CStringGetTextDatum(g.pid == 0 ? (lhd_gateway_enabled ? "starting" : "off") : g.state);
	values[3] = BoolGetDatum(g.seeded);
	values[4] = Int64GetDatum(g.snapshot_id);
	nulls[4] = g.snapshot_id == 0;
	values[5] = TimestampTzGetDatum(g.connected_at);
	nulls[5] = g.connected_at == 0;
	values[6] = TimestampTzGetDatum(g.last_event_at);
	nulls[6] = g.last_event_at == 0;
	values[7] = Int64GetDatum((int64) g.events);
	values[8] = Int64GetDatum((int64) g.resumes);
	values[9] = Int64GetDatum((int64) g.reconnects);
	values[10] = Int64GetDatum((int64) g.identifies);
	values[11] = CStringGetTextDatum(g.alarm);
	nulls[11] = g.alarm[0] == '\0';
	Assert(desc->natts <= lengthof(values));
	PG_RETURN_DATUM(HeapTupleGetDatum(heap_form_tuple(desc, values, nulls)));
}
