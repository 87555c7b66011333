/*-------------------------------------------------------------------------
 *
 * engine.c
 *	  The outbox processing engine shared by the worker and drain_outbox().
 *
 * Owns claiming jobs (FOR UPDATE SKIP LOCKED), the task and request
 * life cycle, dispatching responses to the job kinds, classifying Discord
 * responses into outcomes with backoff, and recording finished tasks in one
 * set-based statement.  Database work runs in units (see lhd_engine.h): in
 * the worker a unit is its own transaction, so HTTP never runs inside one.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <math.h>

#include "access/xact.h"
#include "catalog/pg_type.h"
#include "common/pg_prng.h"
#include "fmgr.h"
#include "miscadmin.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/memutils.h"
#include "utils/snapmgr.h"

#include "lhdiscord.h"
#include "lhd_engine.h"
#include "lhd_access.h"
#include "lhd_json.h"
#include "lhd_shared.h"

PG_FUNCTION_INFO_V1(drain_outbox);

const char *const lhd_method_names[] = {"GET", "PUT", "POST", "DELETE"};

/* Jobs claimed per unit. */
#define CLAIM_BATCH		200

/* ---------- units ---------- */

void
lhd_unit_begin(LhdEngine *e)
{
	e->unit_caller_cxt = CurrentMemoryContext;
	if (e->in_worker)
	{
		SetCurrentStatementStartTimestamp();
		StartTransactionCommand();
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
		CommitTransactionCommand();
	}
	/* A commit leaves TopMemoryContext current: go back to the caller's. */
	MemoryContextSwitchTo(e->unit_caller_cxt);
}

/* ---------- tasks and requests ---------- */

static LhdJobKind
kind_from_text(const char *kind)
{
	if (strcmp(kind, "roles") == 0)
		return LHD_JOB_ROLES;
	if (strcmp(kind, "dm") == 0)
		return LHD_JOB_DM;
	if (strcmp(kind, "member_scan") == 0)
		return LHD_JOB_MEMBER_SCAN;
	if (strcmp(kind, "guild_join") == 0)
		return LHD_JOB_GUILD_JOIN;
	if (strcmp(kind, "token_refresh") == 0)
		return LHD_JOB_TOKEN_REFRESH;
	return LHD_JOB_UNKNOWN;
}

/* What each job kind does at each stage; NULL = nothing to do. */
typedef struct KindOps
{
	void		(*prepare) (LhdEngine *e, List *tasks);	/* batch load, claim unit */
	void		(*start) (LhdEngine *e, LhdTask *t);
	void		(*response) (LhdEngine *e, LhdTask *t, LhdRequest *r);
	void		(*record) (LhdEngine *e, List *tasks);	/* record unit */
	bool		needs_guild;	/* fails while lhdiscord.guild_id is unset */
} KindOps;

static const KindOps kind_ops[] = {
	[LHD_JOB_ROLES] = {lhd_roles_prepare, lhd_roles_start, lhd_roles_response, lhd_roles_record, true},
	[LHD_JOB_DM] = {lhd_dm_prepare, lhd_dm_start, lhd_dm_response, lhd_dm_record, false},
	[LHD_JOB_MEMBER_SCAN] = {lhd_scan_prepare, lhd_scan_start, lhd_scan_response, lhd_scan_record, true},
	[LHD_JOB_GUILD_JOIN] = {lhd_join_prepare, lhd_join_start, lhd_join_response, lhd_join_record, true},
	[LHD_JOB_TOKEN_REFRESH] = {lhd_refresh_prepare, lhd_refresh_start, lhd_refresh_response, lhd_refresh_record, false},
	[LHD_JOB_UNKNOWN] = {NULL, NULL, NULL, NULL, false},
};

/* Run a batch stage for each kind present in tasks. */
static void
for_each_kind(LhdEngine *e, List *tasks, bool record)
{
	for (int k = 0; k < LHD_JOB_UNKNOWN; k++)
	{
		void		(*fn) (LhdEngine *, List *) = record ? kind_ops[k].record : kind_ops[k].prepare;
		List	   *of_kind = NIL;
		ListCell   *lc;

		if (fn == NULL)
			continue;
		foreach(lc, tasks)
			if (((LhdTask *) lfirst(lc))->kind == (LhdJobKind) k)
				of_kind = lappend(of_kind, lfirst(lc));
		if (of_kind != NIL)
			fn(e, of_kind);
		list_free(of_kind);
	}
}

static const struct
{
	LhdMethod	method;
	const char *route;			/* rate-limit route template */
	bool		guild_major;	/* major parameter is the guild (else channel/none) */
}			op_info[] = {
	[LHD_OP_MEMBER_GET] = {LHD_GET, "GET /guilds/{guild_id}/members/{user_id}", true},
	[LHD_OP_ROLE_PUT] = {LHD_PUT, "PUT /guilds/{guild_id}/members/{user_id}/roles/{role_id}", true},
	[LHD_OP_ROLE_DELETE] = {LHD_DELETE, "DELETE /guilds/{guild_id}/members/{user_id}/roles/{role_id}", true},
	[LHD_OP_MEMBERS_LIST] = {LHD_GET, "GET /guilds/{guild_id}/members", true},
	[LHD_OP_MEMBER_ADD] = {LHD_PUT, "PUT /guilds/{guild_id}/members/{user_id}", true},
	[LHD_OP_DM_CHANNEL] = {LHD_POST, "POST /users/@me/channels", false},
	[LHD_OP_MESSAGE] = {LHD_POST, "POST /channels/{channel_id}/messages", false},
	[LHD_OP_OAUTH_TOKEN] = {LHD_POST, "POST /oauth2/token", false},
	[LHD_OP_OAUTH_ME] = {LHD_GET, "GET /users/@me", false},
};

/*
 * A new request of task t for operation op; fmt/... builds the path.  The
 * request lives in the task's memory context.
 */
LhdRequest *
lhd_task_request(LhdTask *t, LhdOp op, const char *fmt,...)
{
	MemoryContext old = MemoryContextSwitchTo(t->cxt);
	LhdRequest *r = palloc0(sizeof(LhdRequest));
	StringInfoData path;
	va_list		args;

	initStringInfo(&path);
	for (;;)
	{
		int			needed;

		va_start(args, fmt);
		needed = appendStringInfoVA(&path, fmt, args);
		va_end(args);
		if (needed == 0)
			break;
		enlargeStringInfo(&path, needed);
	}
	r->op = op;
	r->method = op_info[op].method;
	r->route = (char *) op_info[op].route;
	r->path = path.data;
	r->auth = LHD_AUTH_BOT;
	r->reason = t->reason;
	r->discord_user_id = t->discord_user_id;
	r->task = t;
	MemoryContextSwitchTo(old);
	return r;
}

/*
 * Give r a body: copied into the request's task context (it is sent later,
 * maybe after a retry wait), the source wiped when it is a secret.
 */
void
lhd_request_set_body(LhdRequest *r, char *body, const char *content_type, bool secret)
{
	r->body = MemoryContextStrdup(r->task->cxt, body);
	r->content_type = content_type;
	r->body_secret = secret;
	if (secret)
		lhd_wipe(body);
	pfree(body);
}

void
lhd_task_send(LhdEngine *e, LhdTask *t, LhdRequest *r)
{
	MemoryContext old = MemoryContextSwitchTo(e->cxt);

	if (r->major == NULL && op_info[r->op].guild_major)
		r->major = e->guild_id;
	t->outstanding++;
	e->ready = lappend(e->ready, r);
	MemoryContextSwitchTo(old);
}

bool
lhd_response_ok(const LhdRequest *r)
{
	return r->status >= 200 && r->status < 300;
}

/*
 * "GET /guilds/{guild_id}/members/{user_id}: HTTP 404, Discord code 10007:
 * Unknown Member", or the transport error.  Route templates carry the
 * method and no ids, so summaries never hold a token or a user's data.
 */
char *
lhd_response_summary(const LhdRequest *r)
{
	if (r->status == 0)
		return psprintf("%s: %s", r->route, r->error ? r->error : "no response");
	if (r->discord_code)
		return psprintf("%s: HTTP %ld, Discord code %d%s%s", r->route, r->status,
						r->discord_code, r->error ? ": " : "", r->error ? r->error : "");
	return psprintf("%s: HTTP %ld", r->route, r->status);
}

static int
backoff_ms(int attempts)
{
	double		delay = (double) lhd_retry_base_ms * pow(2.0, Max(attempts - 1, 0));
	double		cap = (double) lhd_retry_max_delay * 1000.0;

	if (delay > cap)
		delay = cap;
	/* Full jitter in [delay/2, delay]. */
	return (int) (delay * (0.5 + 0.5 * pg_prng_double(&pg_global_prng_state)));
}

/*
 * The outcome a failed response leads to: permanent Discord errors fail
 * the job (no retry), everything else is transient.  A request that was
 * never sent (sending paused) does not count as one of t's attempts.
 */
LhdOutcome
lhd_classify(LhdTask *t, LhdRequest *r)
{
	if (r->paused)
		t->uncounted = true;
	if (lhd_response_ok(r))
		return LHD_OUT_DONE;
	switch (r->discord_code)
	{
		case 10003:				/* Unknown Channel */
		case 10004:				/* Unknown Guild */
		case 10007:				/* Unknown Member */
		case 10011:				/* Unknown Role */
		case 10013:				/* Unknown User */
		case 50007:				/* Cannot send messages to this user */
		case 50013:				/* Missing Permissions */
		case 50033:				/* Invalid Recipient(s) */
		case 50035:				/* Invalid Form Body */
			return LHD_OUT_FAILED;
		default:
			break;
	}
	if (r->paused)
		return LHD_OUT_RETRY;
	if (r->status == 0 || r->status >= 500 || r->status == 429 || r->status == 408)
		return LHD_OUT_RETRY;
	/* Any other 4xx is our request's fault: retrying cannot help. */
	return LHD_OUT_FAILED;
}

void
lhd_task_finish(LhdEngine *e, LhdTask *t, LhdOutcome outcome, long status, const char *error)
{
	MemoryContext old = MemoryContextSwitchTo(t->cxt);

	if (outcome == LHD_OUT_RETRY && !t->uncounted && t->attempts >= lhd_max_attempts)
		outcome = LHD_OUT_DEAD;
	if (outcome == LHD_OUT_RETRY)
		t->retry_delay_ms = t->uncounted ? 1000 : backoff_ms(t->attempts);
	t->outcome = outcome;
	t->last_status = status;
	t->last_error = error ? pstrdup(error) : NULL;
	MemoryContextSwitchTo(e->cxt);
	e->active = list_delete_ptr(e->active, t);
	e->finished = lappend(e->finished, t);
	MemoryContextSwitchTo(old);
}

/* Finish a task from a failed response, with the matching outcome. */
void
lhd_task_finish_from(LhdEngine *e, LhdTask *t, LhdRequest *r)
{
	LhdOutcome	outcome = lhd_classify(t, r);
	char	   *summary = lhd_response_summary(r);

	if (outcome == LHD_OUT_FAILED)
		ereport(WARNING,
				(errmsg("lhdiscord: outbox job " INT64_FORMAT " failed without retry: %s",
						t->job_id, summary)));
	lhd_task_finish(e, t, outcome, r->status, summary);
}

/*
 * For job kinds that need more than the claimed row: run plan, whose $1 is
 * the array of the tasks' job ids and whose first column is a job id, and
 * call fill(t, row) in the task's memory context for each row's task.
 */
void
lhd_tasks_load(List *tasks, LhdPlan *plan, void (*fill) (LhdTask *t, int row))
{
	int			n = list_length(tasks);
	Datum	   *ids = palloc(sizeof(Datum) * n);
	Datum		values[1];
	ListCell   *lc;
	int			i = 0;
	int			rows;

	foreach(lc, tasks)
		ids[i++] = Int64GetDatum(((LhdTask *) lfirst(lc))->job_id);
	values[0] = PointerGetDatum(construct_array_builtin(ids, n, INT8OID));
	rows = lhd_exec(plan, values, NULL, true, 0);
	for (int r = 0; r < rows; r++)
	{
		bool		isnull;
		int64		id = DatumGetInt64(lhd_getattr(r, 1, &isnull));

		foreach(lc, tasks)
		{
			LhdTask    *t = lfirst(lc);

			if (t->job_id == id)
			{
				MemoryContext old = MemoryContextSwitchTo(t->cxt);

				fill(t, r);
				MemoryContextSwitchTo(old);
			}
		}
	}
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

/* Claim up to limit due jobs and start them; returns the number claimed. */
int
lhd_engine_claim(LhdEngine *e, int limit)
{
	static LhdPlan plan = {
		.sql = "WITH c AS ("
		"  SELECT id FROM lhdiscord.outbox j "
		"   WHERE state = 'pending' AND run_after <= now() "
		/* DMs of one recipient go one at a time, oldest first. */
		"     AND (kind <> 'dm' OR NOT EXISTS ("
		"          SELECT 1 FROM lhdiscord.outbox p "
		"           WHERE p.kind = 'dm' AND p.discord_user_id = j.discord_user_id "
		"             AND (p.state = 'in_flight' OR (p.state = 'pending' AND p.id < j.id)))) "
		/* A member's roles wait until its guild join is done. */
		"     AND (kind <> 'roles' OR NOT EXISTS ("
		"          SELECT 1 FROM lhdiscord.outbox g "
		"           WHERE g.kind = 'guild_join' AND g.discord_user_id = j.discord_user_id "
		"             AND g.state IN ('pending', 'in_flight'))) "
		"   ORDER BY run_after, id LIMIT $1 FOR UPDATE SKIP LOCKED) "
		"UPDATE lhdiscord.outbox o SET state = 'in_flight', attempts = o.attempts + 1, "
		"       claimed_by = pg_backend_pid(), claimed_at = now(), updated_at = now() "
		"  FROM c WHERE o.id = c.id "
		"RETURNING o.id, o.kind::text, o.discord_user_id, o.user_id, o.attempts, "
		"          o.generation, o.reason, o.payload::text",
		.nargs = 1,
		.argtypes = {INT4OID},
		.options = LHD_PLAN_FRESH
	};
	Datum		values[1];
	int			n;
	List	   *claimed = NIL;
	ListCell   *lc;

	lhd_unit_begin(e);
	values[0] = Int32GetDatum(limit);
	n = lhd_exec(&plan, values, NULL, false, 0);
	for (int i = 0; i < n; i++)
	{
		MemoryContext tcxt = AllocSetContextCreate(e->cxt, "lhdiscord task",
												   ALLOCSET_SMALL_SIZES);
		MemoryContext old = MemoryContextSwitchTo(tcxt);
		LhdTask    *t = palloc0(sizeof(LhdTask));
		bool		isnull;

		t->cxt = tcxt;
		t->job_id = DatumGetInt64(lhd_getattr(i, 1, &isnull));
		t->kind = kind_from_text(lhd_getattr_text(i, 2));
		t->discord_user_id = lhd_getattr_text(i, 3);
		{
			Datum		d = lhd_getattr(i, 4, &isnull);

			t->user_id = isnull ? 0 : DatumGetInt64(d);
		}
		t->attempts = DatumGetInt32(lhd_getattr(i, 5, &isnull));
		t->generation = DatumGetInt32(lhd_getattr(i, 6, &isnull));
		t->reason = lhd_getattr_text(i, 7);
		t->payload = lhd_getattr_text(i, 8);
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
	for_each_kind(e, claimed, false);
	lhd_unit_end(e);

	foreach(lc, claimed)
		start_task(e, (LhdTask *) lfirst(lc));
	list_free(claimed);
	return n;
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

	if (n == 0)
		return 0;

	lhd_unit_begin(e);
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
	for_each_kind(e, e->finished, true);
	lhd_unit_end(e);

	foreach(lc, e->finished)
	{
		LhdTask    *t = lfirst(lc);

		if (t->outcome == LHD_OUT_DONE || t->outcome == LHD_OUT_FAILED ||
			t->outcome == LHD_OUT_DEAD)
		{
			e->jobs_finished++;
			pg_atomic_fetch_add_u64(&lhd_shared->jobs_finished, 1);
		}
		MemoryContextDelete(t->cxt);
	}
	list_free(e->finished);
	e->finished = NIL;
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
		claimed = lhd_engine_claim(e, Min(CLAIM_BATCH, max_jobs - e->jobs_finished));

		if (claimed == 0)
			break;
		while (e->active != NIL)
		{
			CHECK_FOR_INTERRUPTS();
			if (e->ready != NIL || e->inflight > 0)
				lhd_engine_transport(e, 100);
			lhd_engine_dispatch(e);
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

	if (max_jobs < 1)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("max must be at least 1")));
	SPI_connect();
	finished = lhd_drain(false, max_jobs);
	SPI_finish();
	PG_RETURN_INT32(finished);
}
