/*-------------------------------------------------------------------------
 *
 * tasks.c
 *	  Tasks and requests: the life of one claimed outbox job in the engine.
 *
 * Owns what a task is made of and how it ends: the Discord operations (method,
 * rate-limit route, the success statuses Discord documents), building a
 * task's requests, queueing them by lane (a higher lane never waits behind a
 * lower one's queued requests), judging responses (only a documented status
 * is success), classifying failures into outcomes with capped, jittered
 * backoff, and when a job gives up: a role convergence never does on a
 * transient failure (desired state is never abandoned), a DM or guild join
 * after lhdiscord.job_max_age, a member scan or token refresh after
 * lhdiscord.max_attempts.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <math.h>

#include "catalog/pg_type.h"
#include "common/pg_prng.h"
#include "utils/array.h"
#include "utils/memutils.h"

#include "lhdiscord.h"
#include "lhd_engine.h"

const char *const lhd_method_names[] = {"GET", "PUT", "POST", "DELETE"};


LhdJobKind
lhd_job_kind_from_text(const char *kind)
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

const char *const lhd_lane_names[] = {
	[LHD_LANE_URGENT] = "urgent",
	[LHD_LANE_INTERACTIVE] = "interactive",
	[LHD_LANE_BULK] = "bulk",
};

LhdLane
lhd_lane_from_text(const char *lane)
{
	for (int l = LHD_LANE_URGENT; l <= LHD_LANE_BULK; l++)
		if (lane && strcmp(lane, lhd_lane_names[l]) == 0)
			return (LhdLane) l;
	return LHD_LANE_INTERACTIVE;
}

#define MEMBER_ROLE_ROUTE "PUT|DELETE /guilds/{guild_id}/members/{user_id}/roles/{role_id}"

static const struct
{
	LhdMethod	method;
	const char *route;			/* rate-limit route template */
	bool		guild_major;	/* major parameter is the guild (else channel/none) */
	long		ok[2];			/* the success statuses Discord documents */
	const char *limit_route;	/* rate-limit key, when routes share a bucket */
}			op_info[] = {
	[LHD_OP_MEMBER_GET] = {LHD_GET, "GET /guilds/{guild_id}/members/{user_id}", true, {200, 200}, NULL},
	/*
	 * Adding and removing a member's role share one bucket at Discord: pace
	 * them as one route from the first request, so the first removal does
	 * not run into a bucket the additions emptied before a response tells.
	 */
	[LHD_OP_ROLE_PUT] = {LHD_PUT, "PUT /guilds/{guild_id}/members/{user_id}/roles/{role_id}", true, {204, 204},
	MEMBER_ROLE_ROUTE},
	[LHD_OP_ROLE_DELETE] = {LHD_DELETE, "DELETE /guilds/{guild_id}/members/{user_id}/roles/{role_id}", true, {204, 204},
	MEMBER_ROLE_ROUTE},
	[LHD_OP_MEMBERS_LIST] = {LHD_GET, "GET /guilds/{guild_id}/members", true, {200, 200}, NULL},
	/* 201 Created: added; 204 No Content: already a member. */
	[LHD_OP_MEMBER_ADD] = {LHD_PUT, "PUT /guilds/{guild_id}/members/{user_id}", true, {201, 204}, NULL},
	[LHD_OP_DM_CHANNEL] = {LHD_POST, "POST /users/@me/channels", false, {200, 200}, NULL},
	[LHD_OP_MESSAGE] = {LHD_POST, "POST /channels/{channel_id}/messages", false, {200, 200}, NULL},
	[LHD_OP_OAUTH_TOKEN] = {LHD_POST, "POST /oauth2/token", false, {200, 200}, NULL},
	[LHD_OP_OAUTH_ME] = {LHD_GET, "GET /users/@me", false, {200, 200}, NULL},
};

const char *const lhd_job_kind_names[] = {
	[LHD_JOB_ROLES] = "roles",
	[LHD_JOB_DM] = "dm",
	[LHD_JOB_MEMBER_SCAN] = "member_scan",
	[LHD_JOB_GUILD_JOIN] = "guild_join",
	[LHD_JOB_TOKEN_REFRESH] = "token_refresh",
	[LHD_JOB_UNKNOWN] = "unknown",
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
	r->limit_route = op_info[op].limit_route ? op_info[op].limit_route : r->route;
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
	/*
	 * Higher lanes never wait behind queued requests of a lower one: insert
	 * before the first request of a lower lane (bulk, the common case at
	 * volume, appends).
	 */
	if (t->lane == LHD_LANE_BULK || e->ready == NIL ||
		((LhdRequest *) llast(e->ready))->task->lane <= t->lane)
		e->ready = lappend(e->ready, r);
	else
	{
		int			pos = 0;
		ListCell   *lc;

		foreach(lc, e->ready)
		{
			if (((LhdRequest *) lfirst(lc))->task->lane > t->lane)
				break;
			pos++;
		}
		e->ready = list_insert_nth(e->ready, pos, r);
	}
	MemoryContextSwitchTo(old);
}

/*
 * Success is exactly what Discord documents for the route: a 200 with an
 * HTML page where 204 is due (a proxy, a captive portal) is no success.
 */
bool
lhd_response_ok(const LhdRequest *r)
{
	return r->status == op_info[r->op].ok[0] || r->status == op_info[r->op].ok[1];
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
	if (r->status < 400 && !lhd_response_ok(r))
		return psprintf("%s: HTTP %ld, not a response Discord documents for this route",
						r->route, r->status);
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
	/* An undocumented 1xx-3xx (a proxy in the way): try again later. */
	if (r->status < 400)
		return LHD_OUT_RETRY;
	/* Any other 4xx is our request's fault: retrying cannot help. */
	return LHD_OUT_FAILED;
}

/*
 * Does a job that failed transiently give up now?  Desired state is never
 * abandoned: a role convergence retries for as long as it is needed.  A DM
 * or a guild join stops making sense after lhdiscord.job_max_age.  Member
 * scans and token refreshes are queued again on schedule, so they give up
 * after lhdiscord.max_attempts.
 */
static bool
gives_up(const LhdTask *t)
{
	switch (t->kind)
	{
		case LHD_JOB_ROLES:
			return false;
		case LHD_JOB_DM:
		case LHD_JOB_GUILD_JOIN:
			return t->age_seconds >= (double) lhd_job_max_age;
		default:
			return t->attempts >= lhd_max_attempts;
	}
}

/* Move t from the running tasks to those awaiting recording. */
void
lhd_task_move_finished(LhdEngine *e, LhdTask *t)
{
	MemoryContext old = MemoryContextSwitchTo(e->cxt);

	e->active = list_delete_ptr(e->active, t);
	e->held = list_delete_ptr(e->held, t);
	e->finished = lappend(e->finished, t);
	MemoryContextSwitchTo(old);
}

/*
 * Make t's outcome a retry after delay_ms that does not count as an
 * attempt: the job was not at fault (its rows were locked, its recording
 * failed).
 */
void
lhd_task_set_retry(LhdTask *t, int delay_ms, const char *error)
{
	MemoryContext old = MemoryContextSwitchTo(t->cxt);

	t->outcome = LHD_OUT_RETRY;
	t->uncounted = true;
	t->retry_delay_ms = delay_ms;
	t->last_status = 0;
	t->last_error = pstrdup(error);
	MemoryContextSwitchTo(old);
}

void
lhd_task_finish(LhdEngine *e, LhdTask *t, LhdOutcome outcome, long status, const char *error)
{
	MemoryContext old = MemoryContextSwitchTo(t->cxt);

	if (outcome == LHD_OUT_RETRY && !t->uncounted && gives_up(t))
		outcome = LHD_OUT_DEAD;
	if (outcome == LHD_OUT_RETRY)
		t->retry_delay_ms = t->uncounted ? 1000 : backoff_ms(t->attempts);
	t->outcome = outcome;
	t->last_status = status;
	t->last_error = error ? pstrdup(error) : NULL;
	MemoryContextSwitchTo(old);
	lhd_task_move_finished(e, t);
}

/*
 * Hold t until its progress is saved durably (a DM part was confirmed and
 * the next must not go out before that is on disk); lhd_engine_checkpoint
 * saves it and resumes the task.
 */
void
lhd_task_hold(LhdEngine *e, LhdTask *t)
{
	MemoryContext old = MemoryContextSwitchTo(e->cxt);

	e->active = list_delete_ptr(e->active, t);
	e->held = lappend(e->held, t);
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

