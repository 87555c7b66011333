/*-------------------------------------------------------------------------
 *
 * worker.c
 *	  The lhdiscord background worker.
 *
 * Owns registration (only under shared_preload_libraries, never in binary
 * upgrade, started after recovery so never on a standby, restarted 5 s after
 * it exits) and the worker's loop: sleep on its latch until a commit that
 * queued work wakes it (a long poll is only a safety net), then drain the
 * outbox in a pipeline -- claim in a short transaction, send over HTTP with
 * no transaction open, record outcomes in another short transaction -- and
 * run its schedule, on time even in a burst that never ends: give back jobs
 * claimed by a process that died (crash, kill -9, failover), prune finished
 * jobs after lhdiscord.outbox_retention and snapshots after
 * lhdiscord.snapshot_retention, queue refreshes of OAuth tokens
 * close to expiry, run the scheduled reconcile, and, once Discord answers
 * again after an outage, make every waiting retry due at once.
 *
 * Fault handling follows PostgreSQL's own background processes.  The session
 * pins search_path to pg_catalog, pg_temp (the worker is a superuser: a
 * planted operator must never match its SQL) and sets lock_timeout; every
 * transaction is bounded by lhdiscord.worker_statement_timeout.  A schedule
 * step that raises is rolled back and logged and the drain goes on; any
 * other ERROR lands in the sigsetjmp block, which resets the error context
 * stack, aborts the transaction (releasing SPI, snapshots, locks), frees
 * the engine and its curl handles, flushes the error state, gives the
 * claimed jobs back in a fresh transaction and backs off (1 s, doubling to
 * 30 s while errors repeat).  Nothing is ever left to crash the cluster: an
 * exit, when the postmaster or an administrator asks for one, is a clean
 * proc_exit.  While the extension is missing or at another version the
 * worker polls once a second and logs once.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <setjmp.h>

#include "access/xact.h"
#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "postmaster/bgworker.h"
#include "postmaster/interrupt.h"
#include "storage/condition_variable.h"
#include "storage/ipc.h"
#include "storage/latch.h"
#include "storage/lwlock.h"
#include "storage/pmsignal.h"
#include "tcop/tcopprot.h"
#include "utils/builtins.h"
#include "utils/guc.h"
#include "utils/memutils.h"
#include "utils/snapmgr.h"
#include "utils/timeout.h"

#include "lhdiscord.h"
#include "lhd_access.h"
#include "lhd_bgw.h"
#include "lhd_engine.h"
#include "lhd_shared.h"

PGDLLEXPORT void lhdiscord_worker_main(Datum main_arg);

#define HOUSEKEEPING_MS		10000
#define CLAIM_CHUNK			200
#define RECORD_EVERY_MS		20
#define OUTAGE_PROBE_MS		2000
#define WOKEN_EXTRA			16	/* claimed out of turn when a commit wakes a full burst */

static MemoryContext worker_cxt = NULL;	/* the engine, for the process's life */
static MemoryContext iteration_cxt = NULL;	/* reset at each loop iteration */
static MemoryContext burst_cxt = NULL;	/* reset at each pass of a burst */
static LhdEngine *engine = NULL;
static bool engine_stale = false;	/* settings changed: rebuild when idle */
static int64 next_housekeeping = 0;
static int64 next_reconcile = 0;	/* 0 = not scheduled yet */
static int64 next_probe = 0;	/* of Discord, while it is failing */
static int	consecutive_errors = 0;	/* ERRORs since the last clean iteration */
static bool claims_to_release = false;	/* an ERROR left jobs claimed by us */
static TimestampTz error_at = 0;	/* ... claimed before then */

/* True in the worker process: its own outbox writes need no wake-up. */
bool		lhd_am_worker = false;

void
lhd_register_worker(void)
{
	BackgroundWorker w;

	if (!process_shared_preload_libraries_in_progress || IsBinaryUpgrade)
		return;
	memset(&w, 0, sizeof(w));
	w.bgw_flags = BGWORKER_SHMEM_ACCESS | BGWORKER_BACKEND_DATABASE_CONNECTION;
	w.bgw_start_time = BgWorkerStart_RecoveryFinished;
	w.bgw_restart_time = 5;
	strlcpy(w.bgw_library_name, "lhdiscord", BGW_MAXLEN);
	strlcpy(w.bgw_function_name, "lhdiscord_worker_main", BGW_MAXLEN);
	strlcpy(w.bgw_name, "lhdiscord worker", BGW_MAXLEN);
	strlcpy(w.bgw_type, "lhdiscord worker", BGW_MAXLEN);
	RegisterBackgroundWorker(&w);
}

static void
worker_unregister(int code, Datum arg)
{
	lhd_worker_register(NULL);
}

/* ---------- the schedule ---------- */

static void
housekeeping(void *arg)
{
	static LhdPlan reclaim_plan = {
		/*
		 * Jobs claimed by a process that is gone (crash, kill -9, failover):
		 * back to pending.  Claims of a live drain_outbox() are not
		 * committed, so they are never seen here.
		 */
		.sql = "UPDATE lhdiscord.outbox o SET state = 'pending', run_after = now(), claimed_by = NULL, "
		"       updated_at = now(), last_error = 'claimer ended before finishing' "
		"WHERE o.state = 'in_flight'::lhdiscord.outbox_state AND NOT EXISTS ("
		"  SELECT 1 FROM pg_catalog.pg_stat_activity a "
		"   WHERE a.pid = o.claimed_by AND a.backend_start <= o.claimed_at)",
		.nargs = 0,
		.options = LHD_PLAN_FRESH
	};
	int			reclaimed = lhd_exec(&reclaim_plan, NULL, NULL, false, 0);

	if (reclaimed > 0)
		ereport(LOG,
				(errmsg("lhdiscord worker: %d outbox job(s) claimed by an ended process were queued again",
						reclaimed)));
	lhd_prune_outbox(lhd_outbox_retention);
	(void) lhd_prune_snapshots();
	lhd_queue_token_refreshes();
}

/* Give back the jobs this process claimed before the ERROR at *arg. */
static void
release_own_claims(void *arg)
{
	static LhdPlan plan = {
		.sql = "UPDATE lhdiscord.outbox SET state = 'pending', run_after = now() + interval '1 second', "
		"       claimed_by = NULL, updated_at = now() "
		"WHERE state = 'in_flight'::lhdiscord.outbox_state AND claimed_by = pg_backend_pid() "
		"  AND claimed_at <= $1",
		.nargs = 1,
		.argtypes = {TIMESTAMPTZOID}
	};
	Datum		values[1] = {TimestampTzGetDatum(*(TimestampTz *) arg)};

	lhd_exec(&plan, values, NULL, false, 0);
}

/*
 * Make jobs waiting for a retry due now; *arg is how many at most, those
 * that wait longest first (0: all).  All of them once Discord answers again
 * after failing, so the backlog drains at the rate limit, not at the pace of
 * its backoff timers.  One of them every OUTAGE_PROBE_MS while it fails: all
 * jobs may be waiting out a long backoff, and nothing would notice Discord
 * coming back until the first of them is due.
 */
static void
retries_due_now(void *arg)
{
	static LhdPlan plan = {
		.sql = "UPDATE lhdiscord.outbox o SET run_after = now() "
		"WHERE o.id IN (SELECT w.id FROM lhdiscord.outbox w "
		"                WHERE w.state = 'pending'::lhdiscord.outbox_state AND w.attempts > 0 "
		"                  AND w.run_after > now() + interval '100 milliseconds' "
		"                ORDER BY w.run_after DESC LIMIT $1 FOR UPDATE SKIP LOCKED)",
		.nargs = 1,
		.argtypes = {INT4OID},
		.options = LHD_PLAN_FRESH
	};
	int			most = *(int *) arg;
	Datum		values[1] = {Int32GetDatum(most)};
	char		nulls[1] = {most > 0 ? ' ' : 'n'};
	int			n = lhd_exec(&plan, values, nulls, false, 0);

	if (n > 0 && most == 0)
		ereport(LOG,
				(errmsg("lhdiscord worker: Discord answers again; %d job(s) waiting for a retry are due now", n)));
}

/*
 * Milliseconds until the next job that could be claimed is due (<= 0: one
 * is due now), or -1 when none is pending.  Jobs the claim would skip (a
 * recipient's later DMs, roles waiting for a guild join) do not count: their
 * blocker does.
 */
static void
next_due(void *arg)
{
	static LhdPlan plan = {
		.sql = "SELECT (extract(epoch FROM min(j.run_after) - clock_timestamp()) * 1000)::bigint "
		"FROM lhdiscord.outbox j WHERE j.state = 'pending'::lhdiscord.outbox_state "
		"  AND (j.kind <> 'dm'::lhdiscord.outbox_kind OR NOT EXISTS ("
		"       SELECT 1 FROM lhdiscord.outbox p "
		"        WHERE p.kind = 'dm'::lhdiscord.outbox_kind AND p.discord_user_id = j.discord_user_id "
		"          AND (p.state = 'in_flight'::lhdiscord.outbox_state "
		"               OR (p.state = 'pending'::lhdiscord.outbox_state AND p.id < j.id)))) "
		"  AND (j.kind <> 'roles'::lhdiscord.outbox_kind OR NOT EXISTS ("
		"       SELECT 1 FROM lhdiscord.outbox g "
		"        WHERE g.kind = 'guild_join'::lhdiscord.outbox_kind AND g.discord_user_id = j.discord_user_id "
		"          AND g.state IN ('pending'::lhdiscord.outbox_state, 'in_flight'::lhdiscord.outbox_state)))",
		.nargs = 0,
		.options = LHD_PLAN_FRESH
	};
	int64	   *ms = arg;
	bool		isnull;
	Datum		d;

	lhd_exec(&plan, NULL, NULL, true, 1);
	d = lhd_getattr(0, 1, &isnull);
	*ms = isnull ? -1 : Max(DatumGetInt64(d), 0);
}

static void
do_reconcile(void *arg)
{
	const char *why = arg;
	int64		changed = lhd_reconcile_all_internal();

	if (changed > 0)
		ereport(LOG,
				(errmsg("lhdiscord worker: reconcile (%s) changed " INT64_FORMAT " user(s)", why, changed)));
}

static void
run_reconcile(const char *why)
{
	pgstat_report_activity(STATE_RUNNING, psprintf("lhdiscord: reconcile (%s)", why));
	if (!lhd_bgw_protected_unit(do_reconcile, (void *) why, "reconcile"))
	{
		/* A deadlock or timeout: try again soon, not a whole interval later. */
		next_reconcile = lhd_now_ms() + Min((int64) Max(lhd_reconcile_interval, 1) * 1000, 5000);
		return;
	}
	next_reconcile = lhd_reconcile_interval > 0
		? lhd_now_ms() + (int64) lhd_reconcile_interval * 1000 : 0;
}

/*
 * Whatever of the schedule is due: housekeeping, reconcile (after a member
 * scan, or every lhdiscord.reconcile_interval), and retries made due when
 * Discord is back.  Called between bursts and on every pass of a burst, so
 * an endless burst never starves it.  Returns true when it queued or freed
 * work.
 */
static bool
run_schedule(void)
{
	int64		now = lhd_now_ms();
	bool		more = false;

	if (now >= next_housekeeping)
	{
		pgstat_report_activity(STATE_RUNNING, "lhdiscord: housekeeping");
		(void) lhd_bgw_protected_unit(housekeeping, NULL, "housekeeping");
		next_housekeeping = lhd_now_ms() + HOUSEKEEPING_MS;
		more = true;
	}
	if (lhd_discord_failing() && now >= next_probe)
	{
		int			one = 1;

		(void) lhd_bgw_protected_unit(retries_due_now, &one, "probing Discord");
		next_probe = now + OUTAGE_PROBE_MS;
		more = true;
	}
	if (claims_to_release)
		claims_to_release = !lhd_bgw_protected_unit(release_own_claims, &error_at, "giving back claimed jobs");
	if (lhd_take_recovered())
	{
		int			all = 0;

		(void) lhd_bgw_protected_unit(retries_due_now, &all, "making retries due");
		more = true;
	}
	if (engine != NULL && engine->reconcile_requested)
	{
		engine->reconcile_requested = false;
		run_reconcile("after a member scan");
		more = true;
	}
	if (lhd_reconcile_interval <= 0)
		next_reconcile = 0;
	/* A reload that shortens the interval takes effect now, not after the old one. */
	else if (next_reconcile == 0 || next_reconcile > now + (int64) lhd_reconcile_interval * 1000)
		next_reconcile = now + (int64) lhd_reconcile_interval * 1000;
	else if (now >= next_reconcile)
	{
		run_reconcile("scheduled");
		more = true;
	}
	return more;
}

/* ---------- settings and state ---------- */

static void
handle_reload(void)
{
	if (!ConfigReloadPending)
		return;
	ConfigReloadPending = false;
	ProcessConfigFile(PGC_SIGHUP);
	lhd_bgw_session_settings();
	lhd_bgw_recheck_extension();
	if (lhd_is_paused())
		ereport(LOG, (errmsg("lhdiscord worker: configuration reloaded, sending resumes")));
	lhd_set_paused(false, NULL);
	/* The operator says go on: end a 429's wait (it was capped anyway). */
	if (lhd_http_global_wait_ms() > 0)
		ereport(LOG, (errmsg("lhdiscord worker: configuration reloaded, the rate-limit wait ends")));
	lhd_http_clear_waits();
	engine_stale = true;
}

static void
idle_wait(int64 ms)
{
	pgstat_report_activity(STATE_IDLE, NULL);
	lhd_bgw_wait_latch(ms);
}

/* Invalid-request count, 429 wait and activity time, for worker_status. */
static void
publish_state(void)
{
	bool		throttled = false;
	int			invalid = engine ? lhd_http_invalid_count(engine, &throttled) : 0;
	int64		wait_ms = lhd_http_global_wait_ms();

	lhd_set_invalid_count(invalid, throttled);
	lhd_set_rate_limited_until(wait_ms > 0
							   ? TimestampTzPlusMilliseconds(GetCurrentTimestamp(), wait_ms) : 0);
	lhd_worker_touch();
}

/* ---------- the drain ---------- */

/* Drain until there is nothing due: the pipeline keeps HTTP busy. */
static void
run_burst(void)
{
	MemoryContext caller = CurrentMemoryContext;
	int			max_active = Max(lhd_max_concurrency * 4, 64);
	bool		exhausted = false;
	bool		woken = false;	/* a commit queued work during the burst */
	int64		last_record = lhd_now_ms();
	int64		last_publish = 0;

	/* Between bursts the engine is idle: rebuild it after a reload. */
	if (engine != NULL && engine_stale)
	{
		MemoryContextDelete(engine->cxt);
		engine = NULL;
	}
	if (engine == NULL)
	{
		engine = lhd_engine_create(true, worker_cxt);
		engine_stale = false;
	}

	pgstat_report_activity(STATE_RUNNING, "lhdiscord: draining the outbox");
	for (;;)
	{
		int			room = max_active - list_length(engine->active) - list_length(engine->held);

		/*
		 * What a pass allocates outside the engine's and the tasks' contexts
		 * (URLs, headers, parsed responses) is garbage by the next pass.
		 */
		MemoryContextReset(burst_cxt);
		MemoryContextSwitchTo(burst_cxt);
		CHECK_FOR_INTERRUPTS();
		/* Busy bursts never reach WaitLatch: notice a dead postmaster here. */
		if (!PostmasterIsAlive())
			proc_exit(1);
		handle_reload();

		/* The schedule runs on time however long the burst lasts. */
		if (run_schedule())
		{
			exhausted = false;
			pgstat_report_activity(STATE_RUNNING, "lhdiscord: draining the outbox");
			MemoryContextSwitchTo(burst_cxt);
		}

		/*
		 * Claim in batches: refill once half the pipeline has drained (or
		 * at once when it is empty), so that each claim's fixed cost (plan,
		 * claim statement, inputs, commit) is shared by many jobs.  After a
		 * reload, claim nothing more: the burst drains what it holds and
		 * ends, and the next one starts with an engine built from the new
		 * settings (guild_id, api_mode), however busy the outbox is.
		 */
		if (!exhausted && !engine_stale && room >= max_active / 2 && !lhd_is_paused())
		{
			int			want = Min(room, CLAIM_CHUNK);

			if (lhd_engine_claim(engine, want, false) < want)
				exhausted = true;
		}
		/*
		 * A commit queued work while the pipeline is full (of bulk work,
		 * say): claim its urgent and interactive jobs out of turn, so that
		 * a brig strip starts now instead of after half the pipeline has
		 * drained.  Bulk work is never claimed out of turn.
		 */
		else if (woken && !engine_stale && room > -max_active && !lhd_is_paused())
			(void) lhd_engine_claim(engine, WOKEN_EXTRA, true);
		if (woken)
			lhd_engine_check_superseded(engine);
		woken = false;
		if (engine->active == NIL && engine->finished == NIL && engine->held == NIL)
			break;
		if (engine->ready != NIL || engine->inflight > 0)
			lhd_engine_transport(engine, 5);
		lhd_engine_dispatch(engine);
		lhd_engine_checkpoint(engine);
		lhd_engine_check_stalled(engine);
		if (engine->finished != NIL &&
			(list_length(engine->finished) >= 100 || engine->active == NIL ||
			 lhd_now_ms() - last_record >= RECORD_EVERY_MS))
		{
			lhd_engine_record(engine);
			last_record = lhd_now_ms();
		}
		/* Only outcomes whose rows someone else holds: wait a little. */
		if (engine->active == NIL && engine->held == NIL && engine->ready == NIL &&
			engine->inflight == 0 && engine->finished != NIL &&
			lhd_now_ms() < engine->record_blocked_until)
		{
			lhd_bgw_wait_latch(engine->record_blocked_until - lhd_now_ms());
			exhausted = false;
		}
		/* A commit queued more work while we were busy, or a job came back. */
		if (MyLatch->is_set)
		{
			ResetLatch(MyLatch);
			exhausted = false;
			woken = true;
		}
		if (engine->requeued)
		{
			engine->requeued = false;
			exhausted = false;
		}
		/* A throttled burst can last minutes: keep worker_status current. */
		if (lhd_now_ms() - last_publish >= 250)
		{
			publish_state();
			last_publish = lhd_now_ms();
		}
	}
	MemoryContextSwitchTo(caller);
	MemoryContextReset(burst_cxt);
	publish_state();
}

static void
worker_iteration(void)
{
	int64		sleep_ms;
	int64		due = -1;

	CHECK_FOR_INTERRUPTS();
	handle_reload();
	if (!lhd_bgw_extension_ready())
	{
		/* Poll often: ALTER EXTENSION ... UPDATE should not wait a minute. */
		idle_wait(1000);
		return;
	}
	(void) run_schedule();
	run_burst();

	sleep_ms = (int64) lhd_poll_interval * 1000;
	if (next_reconcile > 0)
		sleep_ms = Min(sleep_ms, Max(next_reconcile - lhd_now_ms(), 0));
	sleep_ms = Min(sleep_ms, Max(next_housekeeping - lhd_now_ms(), 0));
	if (lhd_discord_failing())
		sleep_ms = Min(sleep_ms, Max(next_probe - lhd_now_ms(), 0));
	if (!lhd_is_paused())
	{
		if (!lhd_bgw_protected_unit(next_due, &due, "computing the next due job"))
			due = 1000;
		if (due >= 0)
			sleep_ms = Min(sleep_ms, due);
	}
	/* A 429 wait that is pending: sleep it out rather than spin. */
	sleep_ms = Max(sleep_ms, Min(lhd_http_global_wait_ms(), (int64) lhd_poll_interval * 1000));
	consecutive_errors = 0;
	if (sleep_ms <= 0)
		return;					/* something is due right now */
	idle_wait(sleep_ms);
}

/*
 * After an ERROR that escaped a unit (the sigsetjmp block): clean up as
 * PostgreSQL's own background processes do, give our jobs back, back off,
 * carry on.
 */
static void
recover_from_error(void)
{
	int64		backoff;

	lhd_bgw_recover_begin("the outbox drain");
	/* The engine's reset callback closes its curl handles. */
	if (engine != NULL)
	{
		MemoryContextDelete(engine->cxt);
		engine = NULL;
	}
	MemoryContextReset(burst_cxt);
	MemoryContextReset(iteration_cxt);
	consecutive_errors++;
	backoff = Min((int64) 1000 << Min(consecutive_errors - 1, 5), 30000);
	ereport(LOG,
			(errmsg("lhdiscord worker: recovered from an error; its jobs are queued again and it resumes in " INT64_FORMAT " ms",
					backoff)));
	RESUME_INTERRUPTS();

	/*
	 * The extension may be gone, or a row locked: then this fails too, is
	 * logged, and the schedule tries again.
	 */
	error_at = GetCurrentTimestamp();
	claims_to_release = !lhd_bgw_protected_unit(release_own_claims, &error_at, "giving back claimed jobs");

	/* Back off, still serving SIGTERM, reloads and postmaster death. */
	{
		int64		until = lhd_now_ms() + backoff;

		pgstat_report_activity(STATE_IDLE, "lhdiscord: backing off after an error");
		while (lhd_now_ms() < until)
			lhd_bgw_wait_latch(until - lhd_now_ms());
	}
}

void
lhdiscord_worker_main(Datum main_arg)
{
	sigjmp_buf	local_sigjmp_buf;

	pqsignal(SIGHUP, SignalHandlerForConfigReload);
	pqsignal(SIGTERM, die);
	BackgroundWorkerUnblockSignals();

	lhd_am_worker = true;
	BackgroundWorkerInitializeConnection(lhd_database, NULL, 0);
	pgstat_report_appname("lhdiscord worker");
	worker_cxt = AllocSetContextCreate(TopMemoryContext, "lhdiscord worker",
									   ALLOCSET_DEFAULT_SIZES);
	iteration_cxt = AllocSetContextCreate(worker_cxt, "lhdiscord worker iteration",
										  ALLOCSET_DEFAULT_SIZES);
	burst_cxt = AllocSetContextCreate(worker_cxt, "lhdiscord worker burst",
									  ALLOCSET_DEFAULT_SIZES);
	MemoryContextSwitchTo(worker_cxt);
	lhd_bgw_cxt = worker_cxt;

	lhd_bgw_session_settings();
	lhd_worker_register(MyLatch);
	before_shmem_exit(worker_unregister, (Datum) 0);
	ereport(LOG,
			(errmsg("lhdiscord worker started (database \"%s\", api_mode %s)",
					lhd_database, lhd_api_mode == LHD_API_FAKE ? "fake" : "live")));

	if (sigsetjmp(local_sigjmp_buf, 1) != 0)
		recover_from_error();
	PG_exception_stack = &local_sigjmp_buf;

	for (;;)
	{
		MemoryContextReset(iteration_cxt);
		MemoryContextSwitchTo(iteration_cxt);
		worker_iteration();
	}
}
