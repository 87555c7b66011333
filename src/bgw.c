/*-------------------------------------------------------------------------
 *
 * bgw.c
 *	  What lhdiscord's two background workers share.
 *
 * Owns the session settings of a worker (search_path pinned to pg_catalog,
 * pg_temp; lock_timeout; asynchronous commit of its own transactions), the
 * short transaction with SPI that every unit of work runs in, the protected
 * unit (an ERROR is logged, rolled back and counted in worker_status, and
 * the worker goes on), the check that the extension is installed at the
 * library's version, and the latch wait.  The outbox worker (worker.c) and
 * the Gateway worker (gateway.c) each set lhd_bgw_cxt and lhd_bgw_name when
 * they start.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/xact.h"
#include "executor/spi.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "storage/condition_variable.h"
#include "storage/lwlock.h"
#include "storage/latch.h"
#include "tcop/tcopprot.h"
#include "utils/guc.h"
#include "utils/memutils.h"
#include "utils/snapmgr.h"
#include "utils/timeout.h"

#include "lhdiscord.h"
#include "lhd_bgw.h"
#include "lhd_engine.h"
#include "lhd_shared.h"

/* Once ready, the extension is trusted for this long (an error resets it). */
#define EXTENSION_RECHECK_MS	10000

MemoryContext lhd_bgw_cxt = NULL;
const char *lhd_bgw_name = "lhdiscord worker";	/* in log messages */
const char *lhd_bgw_kind = "worker";	/* in worker_status.last_error */

/* The worker session's own settings; again after every reload. */
void
lhd_bgw_session_settings(void)
{
	char		buf[32];

	/* A superuser session: no schema the application owns is searched. */
	SetConfigOption("search_path", "pg_catalog, pg_temp", PGC_SUSET, PGC_S_OVERRIDE);
	snprintf(buf, sizeof(buf), "%d", lhd_worker_lock_timeout);
	SetConfigOption("lock_timeout", buf, PGC_SUSET, PGC_S_OVERRIDE);
	/*
	 * The worker's own transactions (claims, outcomes) commit asynchronously:
	 * a claim lost in a crash leaves its job pending, an outcome lost leaves
	 * it claimed by a dead process and it is reclaimed; either way the job is
	 * sent again, and every job is idempotent (role calls set state; DMs carry
	 * their nonce, and their progress is flushed before the next part).  The
	 * application's own commits are untouched.
	 */
	SetConfigOption("synchronous_commit", "off", PGC_SUSET, PGC_S_OVERRIDE);
}


/* Run fn in its own short transaction with SPI. */
void
lhd_bgw_in_transaction(void (*fn) (void *), void *arg)
{
	MemoryContext caller = CurrentMemoryContext;

	lhd_worker_xact_begin();
	SPI_connect();
	PushActiveSnapshot(GetTransactionSnapshot());
	fn(arg);
	SPI_finish();
	PopActiveSnapshot();
	lhd_worker_xact_commit();
	/* A commit leaves TopMemoryContext current: go back to the caller's. */
	MemoryContextSwitchTo(caller);
}

/* An ERROR was recovered from: count it and show it in worker_status. */
void
lhd_bgw_note_error(const char *what, const char *message)
{
	pg_atomic_fetch_add_u64(&lhd_shared->worker_errors, 1);
	lhd_set_last_error("%s error in %s: %s", lhd_bgw_kind, what, message);
}

/*
 * Run fn in its own transaction; on ERROR, log it, roll back and return
 * false, leaving the drain (engine, claims, curl handles) untouched.  For the
 * schedule's steps, which must not stop the outbox when they fail (a
 * deadlock with the application, a statement timeout).
 */
bool
lhd_bgw_protected_unit(void (*fn) (void *), void *arg, const char *what)
{
	MemoryContext caller = CurrentMemoryContext;
	volatile bool ok = true;

	PG_TRY();
	{
		lhd_bgw_in_transaction(fn, arg);
	}
	PG_CATCH();
	{
		ErrorData  *edata;

		/* PG_CATCH restored error_context_stack; clean up the rest. */
		HOLD_INTERRUPTS();
		MemoryContextSwitchTo(lhd_bgw_cxt);
		edata = CopyErrorData();
		EmitErrorReport();
		AbortOutOfAnyTransaction();
		disable_timeout(STATEMENT_TIMEOUT, false);
		MemoryContextSwitchTo(lhd_bgw_cxt);
		FlushErrorState();
		lhd_bgw_note_error(what, edata->message);
		ereport(LOG,
				(errmsg("%s: %s failed and was rolled back; it runs again later", lhd_bgw_name, what)));
		FreeErrorData(edata);
		RESUME_INTERRUPTS();
		ok = false;
	}
	PG_END_TRY();
	MemoryContextSwitchTo(caller);
	return ok;
}

/* ---------- is the extension there, at our version? ---------- */

static int64 ext_checked_until = 0;	/* known ready until then */

/* Check again at the next call (after a reload or an error). */
void
lhd_bgw_recheck_extension(void)
{
	ext_checked_until = 0;
}

static void
check_extension(void *arg)
{
	static LhdPlan plan = {
		.sql = "SELECT e.extversion FROM pg_catalog.pg_extension e "
		"WHERE e.extname OPERATOR(pg_catalog.=) 'lhdiscord'::pg_catalog.name",
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
 * Each state is logged once, when it begins.
 */
bool
lhd_bgw_extension_ready(void)
{
	/* The state last logged: a version, "" (not installed), "?" (ready). */
	static char reported[NAMEDATALEN + 1] = "?";
	char		version[NAMEDATALEN];

	if (lhd_now_ms() < ext_checked_until)
		return true;
	lhd_bgw_in_transaction(check_extension, version);
	if (strcmp(version, LHD_VERSION) == 0)
	{
		strlcpy(reported, "?", sizeof(reported));
		ext_checked_until = lhd_now_ms() + EXTENSION_RECHECK_MS;
		return true;
	}
	if (strcmp(reported, version) != 0)
	{
		if (version[0] == '\0')
			ereport(LOG,
					(errmsg("%s: extension lhdiscord is not installed in database \"%s\"; waiting",
							lhd_bgw_name, lhd_database),
					 errhint("Run CREATE EXTENSION lhdiscord in that database, or set lhdiscord.database.")));
		else
			ereport(LOG,
					(errmsg("%s: database \"%s\" has lhdiscord %s but the library is %s; waiting",
							lhd_bgw_name, lhd_database, version, LHD_VERSION),
					 errhint("Run ALTER EXTENSION lhdiscord UPDATE in that database.")));
		strlcpy(reported, version, sizeof(reported));
	}
	return false;
}

/*
 * The first half of recovering from an ERROR that reached a worker's
 * sigsetjmp block, as PostgreSQL's own background processes do: the error
 * context stack, pending timeouts and cancels, the transaction (SPI,
 * snapshots, locks, buffer pins, the resource owner), LWLocks, condition
 * variables and the wait event; then the error is logged, counted in
 * worker_status and flushed, and the extension is checked again.  Returns
 * with interrupts held: the caller frees what is its own, then
 * RESUME_INTERRUPTS().
 */
void
lhd_bgw_recover_begin(const char *what)
{
	ErrorData  *edata;

	/* Not PG_TRY: the error context stack must be reset by hand. */
	error_context_stack = NULL;
	HOLD_INTERRUPTS();
	disable_all_timeouts(false);
	QueryCancelPending = false;
	MemoryContextSwitchTo(lhd_bgw_cxt);
	edata = CopyErrorData();
	EmitErrorReport();
	AbortOutOfAnyTransaction();
	LWLockReleaseAll();
	ConditionVariableCancelSleep();
	pgstat_report_wait_end();
	MemoryContextSwitchTo(lhd_bgw_cxt);
	FlushErrorState();
	lhd_bgw_note_error(what, edata->message);
	FreeErrorData(edata);
	/* The extension may be gone. */
	lhd_bgw_recheck_extension();
}

/* Sleep until woken or ms have passed; interrupts (SIGTERM) are served. */
void
lhd_bgw_wait_latch(int64 ms)
{
	(void) WaitLatch(MyLatch, WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH,
					 (long) Max(ms, 1), PG_WAIT_EXTENSION);
	ResetLatch(MyLatch);
	CHECK_FOR_INTERRUPTS();
}

