/*-------------------------------------------------------------------------
 *
 * engine.c
 *	  The outbox processing engine shared by the worker and drain_outbox().
 *
 * Owns claiming jobs (FOR UPDATE SKIP LOCKED, highest lane first, bulk
 * never starved), dispatching responses to the job kinds, saving the
 * progress of held tasks, and recording finished tasks in one set-based
 * statement (only rows nobody else holds).  Each kind's own database work
 * runs in a subtransaction, so one kind's failure (a lock held past
 * lock_timeout, a statement timeout, a trigger that raises) only retries that
 * kind's jobs.  The task and request life cycle is in tasks.c.  Database work runs in units (see lhd_engine.h): in
 * the worker a unit is its own transaction, so HTTP never runs inside one.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/xact.h"
#include "access/xlog.h"
#include "catalog/pg_type.h"
#include "fmgr.h"
#include "miscadmin.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/memutils.h"
#include "utils/resowner.h"
#include "utils/snapmgr.h"
#include "utils/timeout.h"

#include "lhdiscord.h"
#include "lhd_engine.h"
#include "lhd_access.h"
#include "lhd_json.h"
#include "lhd_shared.h"

PG_FUNCTION_INFO_V1(drain_outbox);

/* Jobs claimed per unit. */
#define CLAIM_BATCH		200

/* Retry delay of a job held up by something else (locked rows, a failed record). */
#define ISOLATED_RETRY_MS 1000

/* Recording again outcomes whose rows were locked by someone else, at most every: */
#define RECORD_BLOCKED_MS 200

/* ---------- units ---------- */

void
lhd_unit_begin(LhdEngine *e)
{
	e->unit_caller_cxt = CurrentMemoryContext;
	if (e->in_worker)
	{
		lhd_worker_xact_begin();
		SPI_connect();
	}
	else
	{
		/*
		 * Inside drain_outbox() the units share the caller's transaction;
		 * make this unit's reads see what earlier units wrote.
		 */
		CommandCounterIncrement();
	}
	PushActiveSnapshot(GetTransactionSnapshot());
}

void
lhd_unit_end(LhdEngine *e)
{
	PopActiveSnapshot();
	if (e->in_worker)
	{
		SPI_finish();
		lhd_worker_xact_commit();
	}
	/* A commit leaves TopMemoryContext current: go back to the caller's. */
	MemoryContextSwitchTo(e->unit_caller_cxt);
}

/*
 * Start a transaction of the worker's: every one is bounded by
 * lhdiscord.worker_statement_timeout (lock_timeout is a setting of the
 * worker's session).  A bgworker has no statement timer of its own: the
 * timeout is armed here and disarmed before the commit.
 */
void
lhd_worker_xact_begin(void)
{
	SetCurrentStatementStartTimestamp();
	StartTransactionCommand();
	if (lhd_worker_statement_timeout > 0)
		enable_timeout_after(STATEMENT_TIMEOUT, lhd_worker_statement_timeout);
}

void
lhd_worker_xact_commit(void)
{
	disable_timeout(STATEMENT_TIMEOUT, false);
	CommitTransactionCommand();
}

/* What each job kind does at each stage; NULL = nothing to do. */
typedef struct KindOps
{
	void		(*prepare) (LhdEngine *e, List *tasks);	/* batch load, claim unit */
	void		(*start) (LhdEngine *e, LhdTask *t);
	void		(*response) (LhdEngine *e, LhdTask *t, LhdRequest *r);
	void		(*checkpoint) (LhdEngine *e, List *tasks);	/* save progress of held tasks */
	void		(*resume) (LhdEngine *e, LhdTask *t);	/* go on after a checkpoint */
	void		(*record) (LhdEngine *e, List *tasks);	/* record unit */
	bool		needs_guild;	/* fails while lhdiscord.guild_id is unset */
	bool		record_optional;	/* a failed record does not undo the outcome */
} KindOps;

static const KindOps kind_ops[] = {
	[LHD_JOB_ROLES] = {lhd_roles_prepare, lhd_roles_start, lhd_roles_response, NULL, NULL, lhd_roles_record, true, false},
	/* A DM's record only caches its channel: a delivered DM stays delivered. */
	[LHD_JOB_DM] = {lhd_dm_prepare, lhd_dm_start, lhd_dm_response, lhd_dm_checkpoint, lhd_dm_resume, lhd_dm_record, false, true},
	[LHD_JOB_MEMBER_SCAN] = {lhd_scan_prepare, lhd_scan_start, lhd_scan_response, NULL, NULL, lhd_scan_record, true, false},
	[LHD_JOB_GUILD_JOIN] = {lhd_join_prepare, lhd_join_start, lhd_join_response, NULL, NULL, lhd_join_record, true, false},
	[LHD_JOB_TOKEN_REFRESH] = {lhd_refresh_prepare, lhd_refresh_start, lhd_refresh_response, NULL, NULL, lhd_refresh_record, false, false},
	[LHD_JOB_UNKNOWN] = {0},
};

typedef enum KindStage
{
	STAGE_PREPARE,
	STAGE_CHECKPOINT,
	STAGE_RECORD
} KindStage;

static const char *const stage_names[] = {"loading the inputs of", "saving the progress of", "recording"};

/*
 * Run fn(e, tasks) in a subtransaction, so that one kind's failure (a lock
 * held past lock_timeout, a statement timeout, a trigger that raises) rolls
 * back only that kind's work and the rest of the batch goes on.  Returns
 * NULL, or the error message (after logging it) when fn raised.
 */
static char *
run_isolated(LhdEngine *e, void (*fn) (LhdEngine *, List *), List *tasks,
			 LhdJobKind kind, KindStage stage)
{
	MemoryContext cxt = CurrentMemoryContext;
	ResourceOwner owner = CurrentResourceOwner;
	char	   *volatile failure = NULL;

	BeginInternalSubTransaction(NULL);
	MemoryContextSwitchTo(cxt);
	PG_TRY();
	{
		fn(e, tasks);
		ReleaseCurrentSubTransaction();
	}
	PG_CATCH();
	{
		ErrorData  *edata;

		MemoryContextSwitchTo(cxt);
		edata = CopyErrorData();
		FlushErrorState();
		RollbackAndReleaseCurrentSubTransaction();
		failure = pstrdup(edata->message);
		FreeErrorData(edata);
	}
	PG_END_TRY();
	MemoryContextSwitchTo(cxt);
	CurrentResourceOwner = owner;
	if (failure)
		ereport(WARNING,
				(errmsg("lhdiscord: error %s %d %s job(s), retried later: %s",
						stage_names[stage], list_length(tasks), lhd_job_kind_names[kind], failure)));
	return failure;
}

/*
 * Run a batch stage for each kind present in tasks.  A kind whose prepare
 * or checkpoint failed has its tasks finished for a retry; one whose record
 * failed has its outcomes turned into retries (unless its record is
 * optional), before the outbox rows are written.
 */
static void
for_each_kind(LhdEngine *e, List *tasks, KindStage stage)
{
	for (int k = 0; k < LHD_JOB_UNKNOWN; k++)
	{
		void		(*fn) (LhdEngine *, List *);
		List	   *of_kind = NIL;
		ListCell   *lc;
		char	   *failure;

		fn = stage == STAGE_PREPARE ? kind_ops[k].prepare :
			stage == STAGE_CHECKPOINT ? kind_ops[k].checkpoint : kind_ops[k].record;
		if (fn == NULL)
			continue;
		foreach(lc, tasks)
			if (((LhdTask *) lfirst(lc))->kind == (LhdJobKind) k)
				of_kind = lappend(of_kind, lfirst(lc));
		if (of_kind == NIL)
			continue;
		failure = run_isolated(e, fn, of_kind, (LhdJobKind) k, stage);
		if (failure)
		{
			char	   *why = psprintf("%s the job failed: %s", stage_names[stage], failure);

			foreach(lc, of_kind)
			{
				LhdTask    *t = lfirst(lc);

				if (stage == STAGE_RECORD)
				{
					if (!kind_ops[k].record_optional)
						lhd_task_set_retry(t, ISOLATED_RETRY_MS, why);
				}
				else
				{
					if (stage == STAGE_PREPARE)
						t->state = NULL;
					lhd_task_set_retry(t, ISOLATED_RETRY_MS, why);
					lhd_task_move_finished(e, t);
				}
			}
		}
		list_free(of_kind);
	}
}

/* Save the progress of every held task in one unit, then resume them. */
void
lhd_engine_checkpoint(LhdEngine *e)
{
	List	   *held = e->held;
	ListCell   *lc;

	if (held == NIL)
		return;
	e->held = NIL;
	lhd_unit_begin(e);
	/* Back to running first: a failed save finishes them for a retry. */
	{
		MemoryContext old = MemoryContextSwitchTo(e->cxt);

		e->active = list_concat(e->active, held);
		MemoryContextSwitchTo(old);
	}
	for_each_kind(e, held, STAGE_CHECKPOINT);
	lhd_unit_end(e);
	/* Synchronous, whatever the worker's synchronous_commit says. */
	if (e->in_worker)
		XLogFlush(XactLastCommitEnd);
	foreach(lc, held)
	{
		LhdTask    *t = lfirst(lc);

		if (t->outcome == LHD_OUT_NONE && kind_ops[t->kind].resume)
			kind_ops[t->kind].resume(e, t);
	}
	list_free(held);
}

/* ---------- claiming ---------- */

static int
task_cmp(const ListCell *a, const ListCell *b)
{
	LhdTask    *x = lfirst(a);
	LhdTask    *y = lfirst(b);

	return (x->job_id > y->job_id) - (x->job_id < y->job_id);
}

static void
start_task(LhdEngine *e, LhdTask *t)
{
	if (kind_ops[t->kind].start == NULL)
	{
		ereport(WARNING,
				(errmsg("lhdiscord: outbox job " INT64_FORMAT " has a kind this version does not process",
						t->job_id)));
		lhd_task_finish(e, t, LHD_OUT_FAILED, 0, "job kind not supported by this version");
		return;
	}
	if (kind_ops[t->kind].needs_guild && e->guild_id[0] == '\0')
	{
		ereport(WARNING,
				(errmsg("lhdiscord: outbox job " INT64_FORMAT " cannot run: lhdiscord.guild_id is not set",
						t->job_id)));
		lhd_task_finish(e, t, LHD_OUT_FAILED, 0, "lhdiscord.guild_id is not set");
		return;
	}
	kind_ops[t->kind].start(e, t);
}

/* The claim's conditions on a candidate j, beyond being pending and due. */
#define CLAIMABLE \
	/* DMs of one recipient go one at a time, oldest first. */ \
	"     AND (j.kind <> 'dm' OR NOT EXISTS (" \
	"          SELECT 1 FROM lhdiscord.outbox p " \
	"           WHERE p.kind = 'dm' AND p.discord_user_id = j.discord_user_id " \
	"             AND (p.state = 'in_flight' OR (p.state = 'pending' AND p.id < j.id)))) " \
	/* A member's roles wait until its guild join is done. */ \
	"     AND (j.kind <> 'roles' OR NOT EXISTS (" \
	"          SELECT 1 FROM lhdiscord.outbox g " \
	"           WHERE g.kind = 'guild_join' AND g.discord_user_id = j.discord_user_id " \
	"             AND g.state IN ('pending', 'in_flight'))) "

/*
 * Claim up to limit due jobs and start them; returns the number claimed.
 * Urgent jobs first, then interactive, then bulk, oldest first within a
 * lane; bulk gets what the higher lanes leave, and at least a tenth of the
 * batch when it has due work, so it is never starved.  high_only: no bulk
 * at all (a claim out of turn, for work a commit just queued).
 */
int
lhd_engine_claim(LhdEngine *e, int limit, bool high_only)
{
	static LhdPlan plan = {
		.sql = "WITH hi AS ("
		"  SELECT j.id FROM lhdiscord.outbox j "
		"   WHERE j.state = 'pending' AND j.run_after <= now() AND j.lane < 'bulk' " CLAIMABLE
		"   ORDER BY j.lane, j.run_after, j.id LIMIT $1 FOR UPDATE SKIP LOCKED), "
		"lo AS ("
		"  SELECT j.id FROM lhdiscord.outbox j "
		"   WHERE j.state = 'pending' AND j.run_after <= now() AND j.lane = 'bulk' " CLAIMABLE
		"   ORDER BY j.run_after, j.id "
		"   LIMIT greatest($2 - (SELECT count(*) FROM hi), $3) FOR UPDATE SKIP LOCKED), "
		"c AS (SELECT id FROM hi UNION ALL SELECT id FROM lo) "
		"UPDATE lhdiscord.outbox o SET state = 'in_flight', attempts = o.attempts + 1, "
		"       claimed_by = pg_backend_pid(), claimed_at = now(), updated_at = now() "
		"  FROM c WHERE o.id = c.id "
		"RETURNING o.id, o.kind::text, o.discord_user_id, o.user_id, o.attempts, "
		"          o.generation, o.reason, o.payload::text, o.nonce, "
		"          extract(epoch FROM now() - o.created_at)::float8, o.lane::text",
		.nargs = 3,
		.argtypes = {INT4OID, INT4OID, INT4OID},
		.options = LHD_PLAN_FRESH
	};
	Datum		values[3];
	int			n;
	int			reserve;
	LhdLane		best = LHD_LANE_BULK;
	List	   *claimed = NIL;
	ListCell   *lc;

	lhd_unit_begin(e);
	reserve = high_only ? 0 : Max(limit / 10, 1);
	values[0] = Int32GetDatum(Max(limit - reserve, 1));
	values[1] = Int32GetDatum(high_only ? 0 : limit);
	values[2] = Int32GetDatum(Min(reserve, limit));
	n = lhd_exec(&plan, values, NULL, false, 0);

	/*
	 * The claim ran with a fresh snapshot (SPI takes one per statement that
	 * writes); the kinds' inputs are read read-only, with the active one.
	 * Make that as new as the claim's, or a job committed after this unit
	 * began would be claimed with its inputs unseen: a DM without content,
	 * a convergence to a user's previous row.
	 */
	CommandCounterIncrement();
	PopActiveSnapshot();
	PushActiveSnapshot(GetTransactionSnapshot());
	for (int i = 0; i < n; i++)
	{
		MemoryContext tcxt = AllocSetContextCreate(e->cxt, "lhdiscord task",
												   ALLOCSET_SMALL_SIZES);
		MemoryContext old = MemoryContextSwitchTo(tcxt);
		LhdTask    *t = palloc0(sizeof(LhdTask));
		bool		isnull;

		t->cxt = tcxt;
		t->job_id = DatumGetInt64(lhd_getattr(i, 1, &isnull));
		t->kind = lhd_job_kind_from_text(lhd_getattr_text(i, 2));
		t->discord_user_id = lhd_getattr_text(i, 3);
		{
			Datum		d = lhd_getattr(i, 4, &isnull);

			t->user_id = isnull ? 0 : DatumGetInt64(d);
		}
		t->attempts = DatumGetInt32(lhd_getattr(i, 5, &isnull));
		t->generation = DatumGetInt32(lhd_getattr(i, 6, &isnull));
		t->reason = lhd_getattr_text(i, 7);
		t->payload = lhd_getattr_text(i, 8);
		t->nonce = lhd_getattr_text(i, 9);
		t->age_seconds = DatumGetFloat8(lhd_getattr(i, 10, &isnull));
		t->lane = lhd_lane_from_text(lhd_getattr_text(i, 11));
		best = Min(best, t->lane);
		MemoryContextSwitchTo(e->cxt);
		claimed = lappend(claimed, t);
		MemoryContextSwitchTo(old);
	}
	{
		MemoryContext old = MemoryContextSwitchTo(e->cxt);

		list_sort(claimed, task_cmp);
		e->active = list_concat(e->active, claimed);
		MemoryContextSwitchTo(old);
	}
	for_each_kind(e, claimed, STAGE_PREPARE);
	lhd_unit_end(e);
	if (n > 0)
		lhd_set_serving_lane(lhd_lane_names[best]);

	foreach(lc, claimed)
	{
		LhdTask    *t = lfirst(lc);

		/* Not those whose inputs could not be loaded: they wait for a retry. */
		if (t->outcome == LHD_OUT_NONE)
			start_task(e, t);
	}
	list_free(claimed);
	return n;
}

/* ---------- superseded jobs ---------- */

/*
 * A change that takes access away (a brig) may fold into a convergence the
 * engine is running right now (a promotion of the same member): the job
 * would finish its old plan first, and only then run again for the strip.
 * When a commit wakes the worker, find our running jobs that an urgent
 * change superseded, drop their unsent requests and end them as soon as
 * nothing of theirs is in flight, so that they are claimed again at once
 * (urgent, reading the member first).
 */
void
lhd_engine_check_superseded(LhdEngine *e)
{
	static LhdPlan plan = {
		.sql = "SELECT o.id, o.generation FROM lhdiscord.outbox o "
		"WHERE o.state = 'in_flight' AND o.claimed_by = pg_backend_pid() "
		"  AND o.kind = 'roles' AND o.lane = 'urgent'",
		.nargs = 0,
		.options = LHD_PLAN_FRESH
	};
	int			n;
	List	   *superseded = NIL;
	ListCell   *lc;

	if (e->active == NIL)
		return;
	lhd_unit_begin(e);
	n = lhd_exec(&plan, NULL, NULL, true, 0);
	for (int i = 0; i < n; i++)
	{
		bool		isnull;
		int64		id = DatumGetInt64(lhd_getattr(i, 1, &isnull));
		int32		gen = DatumGetInt32(lhd_getattr(i, 2, &isnull));

		foreach(lc, e->active)
		{
			LhdTask    *t = lfirst(lc);

			/* In the engine's context: SPI's goes with the unit. */
			if (t->job_id == id && t->generation != gen && t->lane != LHD_LANE_URGENT &&
				!t->superseded)
			{
				MemoryContext old = MemoryContextSwitchTo(e->cxt);

				superseded = lappend(superseded, t);
				MemoryContextSwitchTo(old);
			}
		}
	}
	lhd_unit_end(e);

	foreach(lc, superseded)
	{
		LhdTask    *t = lfirst(lc);
		List	   *kept = NIL;
		ListCell   *rc;
		MemoryContext old = MemoryContextSwitchTo(e->cxt);

		t->superseded = true;
		foreach(rc, e->ready)
		{
			LhdRequest *r = lfirst(rc);

			if (r->task == t)
				t->outstanding--;
			else
				kept = lappend(kept, r);
		}
		list_free(e->ready);
		e->ready = kept;
		MemoryContextSwitchTo(old);
		if (t->outstanding == 0)
			lhd_task_finish(e, t, LHD_OUT_CONTINUE, 0, "superseded by a change that takes access away");
	}
	list_free(superseded);
}

/* ---------- responses ---------- */

void
lhd_engine_dispatch(LhdEngine *e)
{
	while (e->completed != NIL)
	{
		LhdRequest *r = linitial(e->completed);
		LhdTask    *t = r->task;

		e->completed = list_delete_first(e->completed);
		t->outstanding--;
		if (kind_ops[t->kind].response)
			kind_ops[t->kind].response(e, t, r);
	}
}

/* ---------- recording ---------- */

static const char *
outcome_state(LhdOutcome o)
{
	switch (o)
	{
		case LHD_OUT_DONE:
			return "done";
		case LHD_OUT_FAILED:
			return "failed";
		case LHD_OUT_DEAD:
			return "dead";
		case LHD_OUT_CONTINUE:
			return "continue";
		default:
			return "pending";
	}
}

/*
 * Lock the outbox rows of the finished tasks that are not locked by someone
 * else; e->finished keeps those, the others are returned.
 */
static List *
lock_finished_rows(LhdEngine *e)
{
	static LhdPlan plan = {
		.sql = "SELECT o.id FROM lhdiscord.outbox o WHERE o.id = ANY ($1::bigint[]) "
		"FOR UPDATE SKIP LOCKED",
		.nargs = 1,
		.argtypes = {INT8ARRAYOID},
		.options = LHD_PLAN_FRESH
	};
	int			n = list_length(e->finished);
	Datum	   *ids = palloc(sizeof(Datum) * n);
	Datum		values[1];
	int64	   *locked;
	int			nlocked;
	int			i = 0;
	ListCell   *lc;
	List	   *now = NIL;
	List	   *later = NIL;
	MemoryContext old;

	/* drain_outbox() waits for the rows, as any statement of its session. */
	if (!e->in_worker)
		return NIL;
	foreach(lc, e->finished)
		ids[i++] = Int64GetDatum(((LhdTask *) lfirst(lc))->job_id);
	values[0] = PointerGetDatum(construct_array_builtin(ids, n, INT8OID));
	nlocked = lhd_exec(&plan, values, NULL, false, 0);
	if (nlocked == n)
		return NIL;
	locked = palloc(sizeof(int64) * Max(nlocked, 1));
	for (int k = 0; k < nlocked; k++)
	{
		bool		isnull;

		locked[k] = DatumGetInt64(lhd_getattr(k, 1, &isnull));
	}
	old = MemoryContextSwitchTo(e->cxt);
	foreach(lc, e->finished)
	{
		LhdTask    *t = lfirst(lc);
		bool		found = false;

		for (int k = 0; k < nlocked && !found; k++)
			found = (locked[k] == t->job_id);
		if (found)
			now = lappend(now, t);
		else
			later = lappend(later, t);
	}
	list_free(e->finished);
	e->finished = now;
	MemoryContextSwitchTo(old);
	return later;
}

/*
 * Write the outcome of every finished task in one statement.  A roles job
 * whose generation moved on while it ran (a change folded into it) goes back
 * to pending so it converges to the newest desired state.
 */
int
lhd_engine_record(LhdEngine *e)
{
	static LhdPlan plan = {
		.sql = "UPDATE lhdiscord.outbox o SET "
		"  state = (CASE WHEN o.kind = 'roles' AND o.generation <> r.gen THEN 'pending' "
		"                WHEN r.state = 'continue' THEN 'pending' "
		"                ELSE r.state END)::lhdiscord.outbox_state, "
		"  attempts = CASE WHEN o.kind = 'roles' AND o.generation <> r.gen AND r.state <> 'pending' THEN 0 "
		"                  WHEN r.state = 'continue' THEN 0 "
		"                  WHEN r.uncounted THEN o.attempts - 1 ELSE o.attempts END, "
		"  run_after = CASE WHEN r.state = 'pending' AND NOT (o.kind = 'roles' AND o.generation <> r.gen) "
		"                   THEN clock_timestamp() + r.delay_ms * interval '1 millisecond' "
		"                   ELSE now() END, "
		"  finished_at = CASE WHEN r.state IN ('done', 'failed', 'dead') "
		"                      AND NOT (o.kind = 'roles' AND o.generation <> r.gen) THEN now() END, "
		"  last_status = nullif(r.status, 0), last_error = r.err, "
		"  claimed_by = NULL, updated_at = now() "
		"FROM unnest($1::bigint[], $2::int[], $3::text[], $4::int[], $5::text[], $6::int[], $7::bool[]) "
		"     AS r(id, gen, state, status, err, delay_ms, uncounted) "
		"WHERE o.id = r.id "
		"RETURNING o.state = 'pending' AND o.run_after <= now()",
		.nargs = 7,
		.argtypes = {INT8ARRAYOID, INT4ARRAYOID, TEXTARRAYOID, INT4ARRAYOID, TEXTARRAYOID,
		INT4ARRAYOID, BOOLARRAYOID},
		.options = LHD_PLAN_FRESH
	};
	int			n = list_length(e->finished);
	Datum	   *ids,
			   *gens,
			   *states,
			   *statuses,
			   *errs,
			   *delays,
			   *uncounted;
	bool	   *errnulls;
	Datum		values[7];
	int			i = 0;
	int			dims[1];
	int			lbs[1] = {1};
	ListCell   *lc;
	int			updated;

	List	   *later;

	if (n == 0 || lhd_now_ms() < e->record_blocked_until)
		return 0;

	lhd_unit_begin(e);
	/*
	 * Only the jobs whose rows are free now: an application transaction that
	 * folded a change into a running job holds its row until it commits, and
	 * must not hold up the outcomes of all the others (or make the worker
	 * wait out lock_timeout).  The others are recorded on a later pass.
	 */
	later = lock_finished_rows(e);
	n = list_length(e->finished);
	if (n == 0)
	{
		lhd_unit_end(e);
		e->finished = later;
		e->record_blocked_until = lhd_now_ms() + RECORD_BLOCKED_MS;
		return 0;
	}
	/* The kinds' own rows first: a failure there changes the outcome. */
	for_each_kind(e, e->finished, STAGE_RECORD);
	ids = palloc(sizeof(Datum) * n);
	gens = palloc(sizeof(Datum) * n);
	states = palloc(sizeof(Datum) * n);
	statuses = palloc(sizeof(Datum) * n);
	errs = palloc(sizeof(Datum) * n);
	errnulls = palloc(sizeof(bool) * n);
	delays = palloc(sizeof(Datum) * n);
	uncounted = palloc(sizeof(Datum) * n);
	foreach(lc, e->finished)
	{
		LhdTask    *t = lfirst(lc);

		ids[i] = Int64GetDatum(t->job_id);
		gens[i] = Int32GetDatum(t->generation);
		states[i] = CStringGetTextDatum(outcome_state(t->outcome));
		statuses[i] = Int32GetDatum((int32) t->last_status);
		errnulls[i] = (t->last_error == NULL);
		errs[i] = t->last_error ? CStringGetTextDatum(t->last_error) : (Datum) 0;
		delays[i] = Int32GetDatum(t->retry_delay_ms);
		uncounted[i] = BoolGetDatum(t->uncounted);
		i++;
	}
	dims[0] = n;

	values[0] = PointerGetDatum(construct_array_builtin(ids, n, INT8OID));
	values[1] = PointerGetDatum(construct_array_builtin(gens, n, INT4OID));
	values[2] = PointerGetDatum(construct_array_builtin(states, n, TEXTOID));
	values[3] = PointerGetDatum(construct_array_builtin(statuses, n, INT4OID));
	values[4] = PointerGetDatum(construct_md_array(errs, errnulls, 1, dims, lbs,
												   TEXTOID, -1, false, TYPALIGN_INT));
	values[5] = PointerGetDatum(construct_array_builtin(delays, n, INT4OID));
	values[6] = PointerGetDatum(construct_array(uncounted, n, BOOLOID, 1, true, TYPALIGN_CHAR));
	updated = lhd_exec(&plan, values, NULL, false, 0);
	for (int k = 0; k < updated; k++)
	{
		bool		isnull;

		if (DatumGetBool(lhd_getattr(k, 1, &isnull)))
			e->requeued = true;
	}
	lhd_unit_end(e);

	foreach(lc, e->finished)
	{
		LhdTask    *t = lfirst(lc);

		/*
		 * A finished DM lets its recipient's next DM go; a finished guild
		 * join lets the member's roles go: claim again at once.
		 */
		if (t->kind == LHD_JOB_DM || t->kind == LHD_JOB_GUILD_JOIN)
			e->requeued = true;
		if (t->outcome == LHD_OUT_DONE || t->outcome == LHD_OUT_FAILED ||
			t->outcome == LHD_OUT_DEAD)
		{
			e->jobs_finished++;
			pg_atomic_fetch_add_u64(&lhd_shared->jobs_finished, 1);
		}
		MemoryContextDelete(t->cxt);
	}
	list_free(e->finished);
	e->finished = later;
	if (later != NIL)
		e->record_blocked_until = lhd_now_ms() + RECORD_BLOCKED_MS;
	return n;
}

/* ---------- transport ---------- */

/* Move ready requests to their transport and collect answers. */
void
lhd_engine_transport(LhdEngine *e, int max_wait_ms)
{
	if (e->mode == LHD_API_FAKE)
	{
		if (e->ready == NIL)
			return;
		lhd_unit_begin(e);
		lhd_fake_execute(e);
		lhd_unit_end(e);
	}
	else
		lhd_http_step(e, max_wait_ms);
}

/* ---------- the drain ---------- */

/*
 * A task that waits for nothing would make the drain spin: a bug, so fail
 * the task loudly rather than hang.
 */
void
lhd_engine_check_stalled(LhdEngine *e)
{
	if (e->active != NIL && e->ready == NIL && e->inflight == 0 && e->completed == NIL)
	{
		LhdTask    *t = linitial(e->active);

		if (t->outstanding == 0)
		{
			ereport(WARNING,
					(errmsg("lhdiscord: outbox job " INT64_FORMAT " stalled", t->job_id)));
			lhd_task_finish(e, t, LHD_OUT_FAILED, 0, "internal error: task stalled");
		}
	}
}

LhdEngine *
lhd_engine_create(bool in_worker, MemoryContext parent)
{
	MemoryContext cxt = AllocSetContextCreate(parent, "lhdiscord engine", ALLOCSET_DEFAULT_SIZES);
	LhdEngine  *e = MemoryContextAllocZero(cxt, sizeof(LhdEngine));

	e->cxt = cxt;
	e->in_worker = in_worker;
	e->mode = lhd_api_mode;
	e->guild_id = MemoryContextStrdup(cxt, lhd_guild_id ? lhd_guild_id : "");
	return e;
}

/*
 * Process up to max_jobs due jobs to a final or retry state, batch by
 * batch; returns the number that reached done, failed or dead.
 */
int
lhd_drain(bool in_worker, int max_jobs)
{
	LhdEngine  *e = lhd_engine_create(in_worker, CurrentMemoryContext);
	int			finished;

	while (e->jobs_finished < max_jobs)
	{
		int			claimed;

		if (e->mode == LHD_API_LIVE && lhd_is_paused())
		{
			ereport(WARNING,
					(errmsg("lhdiscord: Discord sending is paused; outbox jobs stay queued"),
					 errhint("Fix lhdiscord.bot_token, then run SELECT pg_reload_conf().")));
			break;
		}
		claimed = lhd_engine_claim(e, Min(CLAIM_BATCH, max_jobs - e->jobs_finished), false);

		if (claimed == 0)
			break;
		while (e->active != NIL || e->held != NIL)
		{
			CHECK_FOR_INTERRUPTS();
			if (e->ready != NIL || e->inflight > 0)
				lhd_engine_transport(e, 100);
			lhd_engine_dispatch(e);
			lhd_engine_checkpoint(e);
			lhd_engine_check_stalled(e);
		}
		lhd_engine_record(e);
	}
	finished = e->jobs_finished;
	if (e->reconcile_requested)
	{
		/* In its own unit: it must see the snapshot the scan just completed. */
		lhd_unit_begin(e);
		lhd_reconcile_all_internal();
		lhd_unit_end(e);
	}
	MemoryContextDelete(e->cxt);
	return finished;
}

/*
 * drain_outbox(max int DEFAULT 1000) -> int
 * Runs the worker's code path in the calling session and transaction.
 */
Datum
drain_outbox(PG_FUNCTION_ARGS)
{
	int			max_jobs = PG_ARGISNULL(0) ? 1000 : PG_GETARG_INT32(0);
	int			finished;
	int			nestlevel;

	if (max_jobs < 1)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("max must be at least 1")));
	nestlevel = lhd_pin_search_path();
	SPI_connect();
	finished = lhd_drain(false, max_jobs);
	SPI_finish();
	lhd_unpin_search_path(nestlevel);
	PG_RETURN_INT32(finished);
}
