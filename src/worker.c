/*-------------------------------------------------------------------------
 *
 * worker.c
 *	  The lhdiscord background worker.
 *
 * Owns registration (only under shared_preload_libraries, never in binary
 * upgrade, started after recovery so never on a standby, restarted 5 s after
 * a crash) and the worker's loop: sleep on its latch until a commit that
 * queued work wakes it (a long poll is only a safety net), then drain the
 * outbox in a pipeline -- claim in a short transaction, send over HTTP with
 * no transaction open, record outcomes in another short transaction -- and
 * do housekeeping: give back jobs claimed by a process that died (crash,
 * kill -9, failover), prune finished jobs after lhdiscord.outbox_retention,
 * queue refreshes of OAuth tokens close to expiry, and run the scheduled
 * reconcile.
 *
 * Errors inside the loop are caught (sigsetjmp, as PostgreSQL's own
 * auxiliary processes do): the transaction is aborted, the worker gives
 * back the jobs it had claimed, and it carries on after a pause, so a
 * poisonous job ends up dead after lhdiscord.max_attempts instead of
 * crash-looping the worker.
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
#include "storage/ipc.h"
#include "storage/latch.h"
#include "storage/pmsignal.h"
#include "tcop/tcopprot.h"
#include "utils/builtins.h"
#include "utils/guc.h"
#include "utils/memutils.h"
#include "utils/snapmgr.h"

#include "lhdiscord.h"
#include "lhd_access.h"
#include "lhd_engine.h"
#include "lhd_shared.h"

PGDLLEXPORT void lhdiscord_worker_main(Datum main_arg);

#define HOUSEKEEPING_MS		10000
#define CLAIM_CHUNK			200
#define RECORD_EVERY_MS		20

static MemoryContext worker_cxt = NULL;	/* the engine, for the process's life */
static MemoryContext iteration_cxt = NULL;	/* reset at each loop iteration */
static MemoryContext burst_cxt = NULL;	/* reset at each pass of a burst */
static LhdEngine *engine = NULL;
static bool engine_stale = false;	/* settings changed: rebuild when idle */
static int64 next_housekeeping = 0;
static int64 next_reconcile = 0;	/* 0 = not scheduled yet */

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

/* Run fn in its own short transaction with SPI. */
static void
in_transaction(void (*fn) (void *), void *arg)
{
	MemoryContext caller = CurrentMemoryContext;

	SetCurrentStatementStartTimestamp();
	StartTransactionCommand();
	SPI_connect();
	PushActiveSnapshot(GetTransactionSnapshot());
	fn(arg);
	SPI_finish();
	PopActiveSnapshot();
	CommitTransactionCommand();
	/* A commit leaves TopMemoryContext current: go back to the caller's. */
	MemoryContextSwitchTo(caller);
}

/* ---------- is the extension there, at our version? ---------- */

static int64 ext_checked_until = 0;	/* known ready until then */

static void
check_extension(void *arg)
{
	static LhdPlan plan = {
		.sql = "SELECT extversion FROM pg_catalog.pg_extension WHERE extname = 'lhdiscord'",
		.nargs = 0
	};
	char	   *version = arg;		/* NAMEDATALEN bytes; "" = not installed */

	version[0] = '\0';
	if (lhd_exec(&plan, NULL, NULL, true, 1) == 1)
		strlcpy(version, lhd_getattr_text(0, 1), NAMEDATALEN);
}

/*
 * Is the extension installed here, at the library's version?  Once it is,
 * trust that for a housekeeping interval (an error in between resets it).
 */
static bool
extension_ready(void)
{
	static char reported[NAMEDATALEN];	/* version last logged, or "" */
	char		version[NAMEDATALEN];

	if (lhd_now_ms() < ext_checked_until)
		return true;
	in_transaction(check_extension, version);
	if (strcmp(version, LHD_VERSION) == 0)
	{
		reported[0] = '\0';
		ext_checked_until = lhd_now_ms() + HOUSEKEEPING_MS;
		return true;
	}
	if (version[0] != '\0' && strcmp(reported, version) != 0)
	{
		ereport(LOG,
				(errmsg("lhdiscord worker: database \"%s\" has lhdiscord %s but the library is %s; waiting",
						lhd_database, version, LHD_VERSION),
				 errhint("Run ALTER EXTENSION lhdiscord UPDATE in that database.")));
		strlcpy(reported, version, NAMEDATALEN);
	}
	return false;
}

/* ---------- housekeeping ---------- */

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
		"WHERE state = 'in_flight' AND NOT EXISTS ("
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
	lhd_queue_token_refreshes();
}

static void
release_own_claims(void *arg)
{
	static LhdPlan plan = {
		.sql = "UPDATE lhdiscord.outbox SET state = 'pending', run_after = now() + interval '1 second', "
		"       claimed_by = NULL, updated_at = now() "
		"WHERE state = 'in_flight' AND claimed_by = pg_backend_pid()",
		.nargs = 0
	};

	lhd_exec(&plan, NULL, NULL, false, 0);
}

static void
next_due(void *arg)
{
	static LhdPlan plan = {
		.sql = "SELECT (extract(epoch FROM min(run_after) - clock_timestamp()) * 1000)::bigint "
		"FROM lhdiscord.outbox WHERE state = 'pending'",
		.nargs = 0,
		.options = LHD_PLAN_FRESH
	};
	int64	   *ms = arg;
	bool		isnull;
	Datum		d;

	lhd_exec(&plan, NULL, NULL, true, 1);
	d = lhd_getattr(0, 1, &isnull);
	*ms = isnull ? -1 : DatumGetInt64(d);
}

/* ---------- scheduled reconcile ---------- */

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
maybe_reconcile(void)
{
	int64		now = lhd_now_ms();

	if (engine != NULL && engine->reconcile_requested)
	{
		engine->reconcile_requested = false;
		pgstat_report_activity(STATE_RUNNING, "lhdiscord: reconcile after a member scan");
		in_transaction(do_reconcile, "after a member scan");
	}
	if (lhd_reconcile_interval <= 0)
	{
		next_reconcile = 0;
		return;
	}
	/* A reload that shortens the interval takes effect now, not after the old one. */
	if (next_reconcile == 0 || next_reconcile > now + (int64) lhd_reconcile_interval * 1000)
		next_reconcile = now + (int64) lhd_reconcile_interval * 1000;
	else if (now >= next_reconcile)
	{
		pgstat_report_activity(STATE_RUNNING, "lhdiscord: scheduled reconcile");
		in_transaction(do_reconcile, "scheduled");
		next_reconcile = lhd_now_ms() + (int64) lhd_reconcile_interval * 1000;
	}
}

/* ---------- the loop ---------- */

static void
handle_reload(void)
{
	if (!ConfigReloadPending)
		return;
	ConfigReloadPending = false;
	ProcessConfigFile(PGC_SIGHUP);
	ext_checked_until = 0;
	if (lhd_is_paused())
		ereport(LOG, (errmsg("lhdiscord worker: configuration reloaded, sending resumes")));
	lhd_set_paused(false, NULL);
	engine_stale = true;
}

static void
idle_wait(int64 ms)
{
	pgstat_report_activity(STATE_IDLE, NULL);
	(void) WaitLatch(MyLatch, WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH,
					 (long) Max(ms, 1), PG_WAIT_EXTENSION);
	ResetLatch(MyLatch);
}

/* Invalid-request count and activity time, for lhdiscord.worker_status. */
static void
publish_state(void)
{
	bool		throttled;
	int			invalid = lhd_http_invalid_count(engine, &throttled);

	lhd_set_invalid_count(invalid, throttled);
	lhd_worker_touch();
}

/* Drain until there is nothing due: the pipeline keeps HTTP busy. */
static void
run_burst(void)
{
	MemoryContext caller = CurrentMemoryContext;
	int			max_active = Max(lhd_max_concurrency * 4, 64);
	bool		exhausted = false;
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
		int			room = max_active - list_length(engine->active);

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
		/*
		 * Claim in batches: refill once half the pipeline has drained (or
		 * at once when it is empty), so that each claim's fixed cost (plan,
		 * claim statement, inputs, commit) is shared by many jobs.
		 */
		/*
		 * After a reload, claim nothing more: the burst drains what it holds
		 * and ends, and the next one starts with an engine built from the
		 * new settings (guild_id, api_mode), however busy the outbox is.
		 */
		if (!exhausted && !engine_stale && room >= max_active / 2 && !lhd_is_paused())
		{
			int			want = Min(room, CLAIM_CHUNK);

			if (lhd_engine_claim(engine, want) < want)
				exhausted = true;
		}
		if (engine->active == NIL && engine->finished == NIL)
			break;
		if (engine->ready != NIL || engine->inflight > 0)
			lhd_engine_transport(engine, 5);
		lhd_engine_dispatch(engine);
		lhd_engine_check_stalled(engine);
		if (engine->finished != NIL &&
			(list_length(engine->finished) >= 100 || engine->active == NIL ||
			 lhd_now_ms() - last_record >= RECORD_EVERY_MS))
		{
			lhd_engine_record(engine);
			last_record = lhd_now_ms();
		}
		/* A commit queued more work while we were busy, or a job came back. */
		if (MyLatch->is_set)
		{
			ResetLatch(MyLatch);
			exhausted = false;
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
	if (!extension_ready())
	{
		idle_wait((int64) lhd_poll_interval * 1000);
		return;
	}
	if (lhd_now_ms() >= next_housekeeping)
	{
		in_transaction(housekeeping, NULL);
		next_housekeeping = lhd_now_ms() + HOUSEKEEPING_MS;
	}
	run_burst();
	maybe_reconcile();

	sleep_ms = (int64) lhd_poll_interval * 1000;
	if (next_reconcile > 0)
		sleep_ms = Min(sleep_ms, Max(next_reconcile - lhd_now_ms(), 0));
	if (!lhd_is_paused())
	{
		in_transaction(next_due, &due);
		if (due >= 0)
			sleep_ms = Min(sleep_ms, due);
	}
	sleep_ms = Min(sleep_ms, Max(next_housekeeping - lhd_now_ms(), 0));
	if (due == 0 && !lhd_is_paused())
		return;					/* something is due right now */
	idle_wait(sleep_ms);
}

/* After an ERROR: clean up, give our jobs back, pause briefly, carry on. */
static void
recover_from_error(void)
{
	ErrorData  *edata;

	HOLD_INTERRUPTS();
	MemoryContextSwitchTo(worker_cxt);
	edata = CopyErrorData();
	EmitErrorReport();
	AbortOutOfAnyTransaction();
	FlushErrorState();
	if (engine != NULL)
	{
		MemoryContextDelete(engine->cxt);
		engine = NULL;
	}
	lhd_set_last_error("worker error: %s", edata->message);
	FreeErrorData(edata);
	ext_checked_until = 0;		/* the extension may be gone: check again */
	RESUME_INTERRUPTS();

	/* The extension may be gone; then this fails too and we retry later. */
	PG_TRY();
	{
		in_transaction(release_own_claims, NULL);
	}
	PG_CATCH();
	{
		MemoryContextSwitchTo(worker_cxt);
		AbortOutOfAnyTransaction();
		FlushErrorState();
	}
	PG_END_TRY();
	idle_wait(1000);
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

	/*
	 * The worker's own transactions (claims, outcomes) commit asynchronously:
	 * a claim lost in a crash leaves its job pending, an outcome lost leaves
	 * it claimed by a dead process and it is reclaimed; either way the job is
	 * sent again, and every job is idempotent (role calls set state; DMs carry
	 * their nonce).  The application's own commits are untouched.
	 */
	SetConfigOption("synchronous_commit", "off", PGC_USERSET, PGC_S_OVERRIDE);
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
