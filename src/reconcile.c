/*-------------------------------------------------------------------------
 *
 * reconcile.c
 *	  Entitlement reconcile and identity governance (the runbook and the IGA
 *	  policy).
 *
 * Owns the decision matrix (decide()), the entitlement context (governance
 * mode, latest trusted snapshot and its freshness, entitlement role,
 * privileged roles), and reconcile(), reconcile_user(), restore_user().
 *
 * reconcile() is set-based: one query over users joined to the entitled and
 * privileged sets returns only the users whose state must change; the
 * changes are applied with one statement per kind (status, roles, exemption
 * bookkeeping, audit rows) built from arrays.  Snapshot evidence fails
 * closed: in Discord-leading mode nobody is entitled without a trusted
 * snapshot younger than lhdiscord.snapshot_max_age.  A run that would
 * suspend more than lhdiscord.reconcile_max_suspend_percent of the active
 * users (and more than 10) changes nothing unless forced.  A second run with
 * the same inputs finds nothing to do and writes nothing; a dry run returns
 * the same rows and writes nothing at all.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <math.h>

#include "access/htup_details.h"
#include "catalog/pg_type.h"
#include "fmgr.h"
#include "funcapi.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/guc.h"
#include "utils/json.h"
#include "utils/timestamp.h"

#include "lhdiscord.h"
#include "lhd_access.h"

PG_FUNCTION_INFO_V1(decide);
PG_FUNCTION_INFO_V1(access_context);
PG_FUNCTION_INFO_V1(reconcile);
PG_FUNCTION_INFO_V1(reconcile_user);
PG_FUNCTION_INFO_V1(restore_user);

/* A guard never trips for this many suspensions or fewer. */
#define GUARD_MIN_SUSPENSIONS 10

/* A JSON object naming what prompted the decision, or NULL (see below). */
static const char *reconcile_evidence = NULL;

/* ---------- the decision matrix ---------- */

static const char *const rule_names[] = {
	[LHD_RULE_IN_SCOPE_ENTITLED] = "in_scope_entitled",
	[LHD_RULE_IN_SCOPE_NOT_ENTITLED] = "in_scope_not_entitled",
	[LHD_RULE_NOT_IN_SCOPE_ENTITLED] = "not_in_scope_entitled",
	[LHD_RULE_NOT_IN_SCOPE_NOT_ENTITLED] = "not_in_scope_not_entitled",
};

const char *
lhd_rule_name(LhdRule rule)
{
	return rule_names[rule];
}

/*
 * The runbook's matrix:
 *	 in scope,     entitled     -> active
 *	 in scope,     not entitled -> suspended, portal roles removed, sessions revoked
 *	 not in scope, entitled     -> suspended, portal roles removed, sessions revoked
 *	 not in scope, not entitled -> suspended, portal roles removed
 * A privileged user (privileged role or unexpired break-glass) is never
 * suspended: the cell is kept as evidence and the exemption recorded.
 */
LhdDecision
lhd_decide(bool in_scope, bool entitled, bool privileged)
{
	LhdDecision d = {0};

	if (in_scope && entitled)
		d.rule = LHD_RULE_IN_SCOPE_ENTITLED;
	else if (in_scope)
		d.rule = LHD_RULE_IN_SCOPE_NOT_ENTITLED;
	else if (entitled)
		d.rule = LHD_RULE_NOT_IN_SCOPE_ENTITLED;
	else
		d.rule = LHD_RULE_NOT_IN_SCOPE_NOT_ENTITLED;

	if (d.rule == LHD_RULE_IN_SCOPE_ENTITLED)
		d.active = true;
	else if (privileged)
	{
		d.active = true;
		d.exempt = true;
	}
	else
	{
		d.active = false;
		d.remove_roles = true;
		d.revoke_sessions = (d.rule != LHD_RULE_NOT_IN_SCOPE_NOT_ENTITLED);
	}
	return d;
}

/*
 * decide(in_scope, entitled, privileged) -> text
 * The matrix cell, or 'exempt' when privilege prevents a suspension.
 */
Datum
decide(PG_FUNCTION_ARGS)
{
	LhdDecision d;

	lhd_require_not_null(PG_ARGISNULL(0), "in_scope");
	lhd_require_not_null(PG_ARGISNULL(1), "entitled");
	lhd_require_not_null(PG_ARGISNULL(2), "privileged");
	d = lhd_decide(PG_GETARG_BOOL(0), PG_GETARG_BOOL(1), PG_GETARG_BOOL(2));
	PG_RETURN_TEXT_P(cstring_to_text(d.exempt ? "exempt" : lhd_rule_name(d.rule)));
}

/* ---------- the entitlement context ---------- */

void
lhd_access_context(LhdAccessContext *ctx)
{
	static LhdPlan snap_plan = {
		.sql = "SELECT id, taken_at, extract(epoch FROM now() - taken_at)::float8 "
		"FROM lhdiscord.member_snapshots WHERE complete AND trusted "
		"ORDER BY taken_at DESC, id DESC LIMIT 1",
		.nargs = 0
	};
	bool		isnull;

	memset(ctx, 0, sizeof(*ctx));
	ctx->portal_leading = (lhd_governance_mode == LHD_GOV_PORTAL_LEADING);
	ctx->snapshot_age = -1;
	if (lhd_exec(&snap_plan, NULL, NULL, true, 1) == 1)
	{
		ctx->snapshot_id = DatumGetInt64(lhd_getattr(0, 1, &isnull));
		ctx->snapshot_taken_at = DatumGetTimestampTz(lhd_getattr(0, 2, &isnull));
		ctx->snapshot_age = DatumGetFloat8(lhd_getattr(0, 3, &isnull));
		ctx->fresh = ctx->snapshot_age <= (double) lhd_snapshot_max_age;
	}
	ctx->entitlement_key = pstrdup(lhd_entitlement_key);
	ctx->entitlement_role_id = lhd_role_id_for_key(ctx->entitlement_key);
	/* The setting's check hook accepts only valid role names. */
	ctx->nprivileged = lhd_split_list(lhd_privileged_roles, &ctx->privileged);
}

static const char *
mode_name(const LhdAccessContext *ctx)
{
	return ctx->portal_leading ? "portal_leading" : "discord_leading";
}

static const char *
snapshot_state(const LhdAccessContext *ctx)
{
	if (ctx->snapshot_id == 0)
		return "missing";
	return ctx->fresh ? "fresh" : "stale";
}

/*
 * access_context() -> one row: the inputs every decision shares, for the
 * status_map view and for DBAs.
 */
Datum
access_context(PG_FUNCTION_ARGS)
{
	MemoryContext callercxt = CurrentMemoryContext;
	TupleDesc	desc;
	LhdAccessContext ctx;
	Datum		values[8];
	bool		nulls[8] = {0};
	HeapTuple	tuple;

	if (get_call_result_type(fcinfo, NULL, &desc) != TYPEFUNC_COMPOSITE)
		elog(ERROR, "access_context: return type must be a row type");
	desc = BlessTupleDesc(desc);

	SPI_connect();
	lhd_access_context(&ctx);
	{
		MemoryContext old = MemoryContextSwitchTo(callercxt);

		values[0] = CStringGetTextDatum(mode_name(&ctx));
		values[1] = Int64GetDatum(ctx.snapshot_id);
		nulls[1] = ctx.snapshot_id == 0;
		values[2] = TimestampTzGetDatum(ctx.snapshot_taken_at);
		nulls[2] = ctx.snapshot_id == 0;
		values[3] = Float8GetDatum(ctx.snapshot_age);
		nulls[3] = ctx.snapshot_id == 0;
		values[4] = BoolGetDatum(ctx.fresh);
		values[5] = CStringGetTextDatum(ctx.entitlement_key);
		values[6] = ctx.entitlement_role_id ? CStringGetTextDatum(ctx.entitlement_role_id) : (Datum) 0;
		nulls[6] = ctx.entitlement_role_id == NULL;
		values[7] = lhd_text_array(ctx.privileged, ctx.nprivileged);
		tuple = heap_form_tuple(desc, values, nulls);
		MemoryContextSwitchTo(old);
	}
	SPI_finish();
	PG_RETURN_DATUM(HeapTupleGetDatum(tuple));
}

/* ---------- reconcile ---------- */

/*
 * The users whose state must change, in one pass.  The filter restates the
 * matrix's outcome in SQL only to skip unchanged users (new status differs,
 * roles to strip, exemption to record or clear); each candidate is then
 * decided by lhd_decide() in C.  One statement per governance mode, so the
 * entitled set is built (and de-duplicated) once, by a hash join.  The
 * statement is read-only, so it may use parallel query: a full pass joins
 * the whole account and snapshot tables.
 *
 * Parameters: $1 snapshot id, $2 snapshot fresh, $3 entitlement role id,
 * $4 entitlement key, $5 privileged roles (, $6 the one user).
 */
#define CANDIDATE_COLUMNS \
	"SELECT u.user_id, u.status::text, u.in_scope, e.entitled, " \
	"       (pr.user_id IS NOT NULL OR bg.user_id IS NOT NULL), " \
	"       (s.exempt_since IS NOT NULL), " \
	"       (SELECT array_agg(r.role ORDER BY r.role) FROM lhdiscord.user_roles r WHERE r.user_id = u.user_id), " \
	"       CASE WHEN bg.user_id IS NOT NULL THEN 'break_glass' " \
	"            WHEN pr.user_id IS NOT NULL THEN 'privileged_role' END "

#define CANDIDATE_FILTER \
	"WHERE u.status <> 'disabled' AND (" \
	/* new status: active when in scope and entitled, or privileged */ \
	"      ((u.in_scope AND e.entitled) OR pr.user_id IS NOT NULL OR bg.user_id IS NOT NULL) " \
	"        <> (u.status = 'active') " \
	/* a suspension strips the portal roles */ \
	"   OR (NOT ((u.in_scope AND e.entitled) OR pr.user_id IS NOT NULL OR bg.user_id IS NOT NULL) " \
	"       AND EXISTS (SELECT 1 FROM lhdiscord.user_roles r WHERE r.user_id = u.user_id)) " \
	/* exempt now (privilege prevents a suspension) vs recorded as exempt */ \
	"   OR (NOT (u.in_scope AND e.entitled) AND (pr.user_id IS NOT NULL OR bg.user_id IS NOT NULL)) " \
	"        <> (s.exempt_since IS NOT NULL)) "

#define PRIVILEGED_JOINS(user_filter) \
	"LEFT JOIN (SELECT DISTINCT user_id FROM lhdiscord.user_roles WHERE role = ANY ($5)" user_filter ") pr " \
	"       ON pr.user_id = u.user_id " \
	"LEFT JOIN (SELECT DISTINCT user_id FROM lhdiscord.break_glass WHERE expires_at > now()" user_filter ") bg " \
	"       ON bg.user_id = u.user_id " \
	"LEFT JOIN lhdiscord.access_state s ON s.user_id = u.user_id "

/* Discord-leading: entitled = an active account holds the role in the snapshot. */
#define DISCORD_ENTITLED(user_filter) \
	"LEFT JOIN (SELECT a.user_id FROM lhdiscord.discord_accounts a " \
	"             JOIN lhdiscord.snapshot_members m ON m.snapshot_id = $1 AND m.discord_user_id = a.discord_user_id " \
	"            WHERE $2 AND a.status = 'active' AND $3 = ANY (m.role_ids)" user_filter " " \
	"            GROUP BY a.user_id) ent ON ent.user_id = u.user_id " \
	"CROSS JOIN LATERAL (SELECT ent.user_id IS NOT NULL AS entitled) e "

/* Portal-leading: entitled = the user holds the entitlement portal role. */
#define PORTAL_ENTITLED \
	"LEFT JOIN lhdiscord.user_roles ent ON ent.user_id = u.user_id AND ent.role = $4 " \
	"CROSS JOIN LATERAL (SELECT ent.user_id IS NOT NULL AS entitled) e "

#define CANDIDATE_PLAN(entitled, privileged_filter, last, cursor_options) { \
	.sql = CANDIDATE_COLUMNS "FROM lhdiscord.users u " entitled PRIVILEGED_JOINS(privileged_filter) \
		CANDIDATE_FILTER last, \
	.nargs = 6, \
	.argtypes = {INT8OID, BOOLOID, TEXTOID, TEXTOID, TEXTARRAYOID, INT8OID}, \
	.options = (cursor_options) }

/* The full pass may use parallel query; one user's lookups never would. */
#define ALL_USERS_PLAN	(LHD_PLAN_FRESH | CURSOR_OPT_PARALLEL_OK)
#define ONE_USER_PLAN	LHD_PLAN_FRESH

/* [portal_leading][one user]; $6 is the one user, unused for everyone. */
static LhdPlan candidates[2][2] = {
	{CANDIDATE_PLAN(DISCORD_ENTITLED(""), "", "ORDER BY u.user_id", ALL_USERS_PLAN),
		CANDIDATE_PLAN(DISCORD_ENTITLED(" AND a.user_id = $6"), " AND user_id = $6",
					   "AND u.user_id = $6", ONE_USER_PLAN)},
	{CANDIDATE_PLAN(PORTAL_ENTITLED, "", "ORDER BY u.user_id", ALL_USERS_PLAN),
		CANDIDATE_PLAN(PORTAL_ENTITLED, " AND user_id = $6", "AND u.user_id = $6", ONE_USER_PLAN)},
};

typedef struct Change
{
	int64		user_id;
	char	   *old_status;
	bool		in_scope;
	bool		entitled;
	bool		privileged;
	bool		was_exempt;
	char	   *privilege;		/* break_glass / privileged_role / NULL */
	LhdDecision d;
	char	  **roles;			/* portal roles held now */
	int			nroles;
	bool		status_changes;
	bool		revoke;			/* sessions revoked by this change */
	bool		strip;			/* roles removed by this change */
	bool		returned;		/* a reconcile row (state changes) */
	const char *action;
	const char *jml;
} Change;

typedef struct RunResult
{
	Change	   *changes;
	int			n;
	int			leavers;
	int64		active_users;
	bool		aborted;
} RunResult;

/* after_json of an entitlement.reconcile row: the decision and its evidence. */
static char *
decision_json(const Change *c, const LhdAccessContext *ctx, const char *new_status)
{
	StringInfoData b;
	bool		first = true;

	initStringInfo(&b);
	appendStringInfoChar(&b, '{');
	lhd_json_append_str(&b, "decision", new_status, &first);
	lhd_json_append_str(&b, "action", c->action, &first);
	lhd_json_append_str(&b, "rule", lhd_rule_name(c->d.rule), &first);
	lhd_json_append_str(&b, "mode", mode_name(ctx), &first);
	lhd_json_append_raw(&b, "snapshot_id", ctx->snapshot_id ? psprintf(INT64_FORMAT, ctx->snapshot_id) : NULL, &first);
	lhd_json_append_raw(&b, "snapshot_age_seconds",
						ctx->snapshot_id ? psprintf("%.0f", floor(ctx->snapshot_age)) : NULL, &first);
	lhd_json_append_str(&b, "snapshot_state", snapshot_state(ctx), &first);
	lhd_json_append_str(&b, "entitlement_key", ctx->entitlement_key, &first);
	lhd_json_append_raw(&b, "in_scope", c->in_scope ? "true" : "false", &first);
	lhd_json_append_raw(&b, "entitled", c->entitled ? "true" : "false", &first);
	lhd_json_append_raw(&b, "privileged", c->privileged ? "true" : "false", &first);
	lhd_json_append_str(&b, "exemption", c->d.exempt ? c->privilege : NULL, &first);
	{
		StringInfoData roles;

		initStringInfo(&roles);
		lhd_json_append_array(&roles, c->strip ? c->roles : NULL, c->strip ? c->nroles : 0);
		lhd_json_append_raw(&b, "roles_removed", roles.data, &first);
	}
	lhd_json_append_raw(&b, "sessions_revoked", c->revoke ? "true" : "false", &first);
	lhd_json_append_str(&b, "old_status", c->old_status, &first);
	lhd_json_append_str(&b, "new_status", new_status, &first);
	lhd_json_append_str(&b, "jml", c->jml, &first);
	/* What prompted a decision made outside a reconcile run (a Gateway event). */
	if (reconcile_evidence != NULL)
		lhd_json_append_raw(&b, "evidence", reconcile_evidence, &first);
	appendStringInfoChar(&b, '}');
	return b.data;
}

/* Load the changes and decide what each one does. */
static void
collect_changes(const LhdAccessContext *ctx, int64 only_user, RunResult *res)
{
	Datum		values[6];
	char		nulls[6] = {' ', ' ', ' ', ' ', ' ', ' '};
	int			n;

	values[0] = Int64GetDatum(ctx->snapshot_id);
	values[1] = BoolGetDatum(ctx->fresh);
	if (ctx->entitlement_role_id)
		values[2] = CStringGetTextDatum(ctx->entitlement_role_id);
	else
		nulls[2] = 'n';
	values[3] = CStringGetTextDatum(ctx->entitlement_key);
	values[4] = lhd_text_array(ctx->privileged, ctx->nprivileged);
	values[5] = Int64GetDatum(only_user);
	if (only_user == 0)
		nulls[5] = 'n';

	n = lhd_exec(&candidates[ctx->portal_leading ? 1 : 0][only_user ? 1 : 0],
				 values, nulls, false, 0);
	res->changes = palloc0(sizeof(Change) * (n + 1));
	res->n = n;
	for (int i = 0; i < n; i++)
	{
		Change	   *c = &res->changes[i];
		bool		isnull;
		Datum		d;
		bool		new_active;

		c->user_id = DatumGetInt64(lhd_getattr(i, 1, &isnull));
		c->old_status = lhd_getattr_text(i, 2);
		c->in_scope = DatumGetBool(lhd_getattr(i, 3, &isnull));
		c->entitled = DatumGetBool(lhd_getattr(i, 4, &isnull));
		c->privileged = DatumGetBool(lhd_getattr(i, 5, &isnull));
		c->was_exempt = DatumGetBool(lhd_getattr(i, 6, &isnull));
		d = lhd_getattr(i, 7, &isnull);
		if (!isnull)
		{
			Datum	   *elems;
			bool	   *enulls;

			deconstruct_array_builtin(DatumGetArrayTypeP(d), TEXTOID,
									  &elems, &enulls, &c->nroles);
			c->roles = palloc(sizeof(char *) * (c->nroles + 1));
			for (int k = 0; k < c->nroles; k++)
				c->roles[k] = TextDatumGetCString(elems[k]);
		}
		c->privilege = lhd_getattr_text(i, 8);
		c->d = lhd_decide(c->in_scope, c->entitled, c->privileged);

		new_active = c->d.active;
		c->status_changes = (strcmp(c->old_status, new_active ? "active" : "suspended") != 0);
		c->strip = c->d.remove_roles && c->nroles > 0;
		/* Sessions are revoked when the user is suspended now. */
		c->revoke = c->d.revoke_sessions && c->status_changes;
		c->returned = c->status_changes || c->strip;
		if (new_active && c->status_changes)
		{
			c->action = "activate";
			c->jml = "joiner";
		}
		else if (c->status_changes)
		{
			c->action = c->revoke ? "suspend_revoke_sessions" : "suspend";
			c->jml = (strcmp(c->old_status, "active") == 0) ? "leaver" : "mover";
			if (strcmp(c->old_status, "active") == 0)
				res->leavers++;
		}
		else if (c->strip)
		{
			c->action = "remove_roles";
			c->jml = "mover";
		}
	}
	/* The changes are copied out: release the query's result now. */
	SPI_freetuptable(SPI_tuptable);
}

static int64
count_active_users(void)
{
	static LhdPlan plan = {
		.sql = "SELECT count(*) FROM lhdiscord.users WHERE status = 'active'",
		.nargs = 0
	};
	bool		isnull;

	lhd_exec(&plan, NULL, NULL, false, 1);
	return DatumGetInt64(lhd_getattr(0, 1, &isnull));
}

/* Audit rows go in one statement. */
typedef struct AuditBatch
{
	int			n;
	int			cap;
	Datum	   *actions;
	Datum	   *subjects;
	Datum	   *befores;
	bool	   *before_nulls;
	Datum	   *afters;
	Datum	   *descriptions;
} AuditBatch;

static void
batch_add(AuditBatch *b, const char *action, int64 subject, const char *before,
		  const char *after, const char *description)
{
	if (b->n == b->cap)
	{
		b->cap = b->cap ? b->cap * 2 : 64;
		b->actions = b->actions ? repalloc(b->actions, sizeof(Datum) * b->cap) : palloc(sizeof(Datum) * b->cap);
		b->subjects = b->subjects ? repalloc(b->subjects, sizeof(Datum) * b->cap) : palloc(sizeof(Datum) * b->cap);
		b->befores = b->befores ? repalloc(b->befores, sizeof(Datum) * b->cap) : palloc(sizeof(Datum) * b->cap);
		b->before_nulls = b->before_nulls ? repalloc(b->before_nulls, sizeof(bool) * b->cap) : palloc(sizeof(bool) * b->cap);
		b->afters = b->afters ? repalloc(b->afters, sizeof(Datum) * b->cap) : palloc(sizeof(Datum) * b->cap);
		b->descriptions = b->descriptions ? repalloc(b->descriptions, sizeof(Datum) * b->cap) : palloc(sizeof(Datum) * b->cap);
	}
	b->actions[b->n] = CStringGetTextDatum(action);
	b->subjects[b->n] = Int64GetDatum(subject);
	b->before_nulls[b->n] = (before == NULL);
	b->befores[b->n] = before ? CStringGetTextDatum(before) : (Datum) 0;
	b->afters[b->n] = CStringGetTextDatum(after);
	b->descriptions[b->n] = CStringGetTextDatum(description);
	b->n++;
}

static void
batch_write(AuditBatch *b)
{
	static LhdPlan plan = {
		.sql = "INSERT INTO lhdiscord.audit_log "
		"(action, subject_user_id, entity, entity_pk, before_json, after_json, description) "
		"SELECT x.action, x.subject, 'users', x.subject::text, x.before::jsonb, x.after::jsonb, x.descr "
		"FROM unnest($1::text[], $2::bigint[], $3::text[], $4::text[], $5::text[]) "
		"     AS x(action, subject, before, after, descr)",
		.nargs = 5,
		.argtypes = {TEXTARRAYOID, INT8ARRAYOID, TEXTARRAYOID, TEXTARRAYOID, TEXTARRAYOID},
		.options = CURSOR_OPT_GENERIC_PLAN
	};
	Datum		values[5];
	int			dims[1] = {b->n};
	int			lbs[1] = {1};

	if (b->n == 0)
		return;
	values[0] = PointerGetDatum(construct_array_builtin(b->actions, b->n, TEXTOID));
	values[1] = PointerGetDatum(construct_array_builtin(b->subjects, b->n, INT8OID));
	values[2] = PointerGetDatum(construct_md_array(b->befores, b->before_nulls, 1, dims, lbs,
												   TEXTOID, -1, false, TYPALIGN_INT));
	values[3] = PointerGetDatum(construct_array_builtin(b->afters, b->n, TEXTOID));
	values[4] = PointerGetDatum(construct_array_builtin(b->descriptions, b->n, TEXTOID));
	lhd_exec(&plan, values, NULL, false, 0);
}

/*
 * Lock the users of changes [from, to) whose status and in_scope are still
 * what the decision read, and drop the other changes: the candidate query
 * ran without locks, and the application may have changed a user since (an
 * in_scope change runs reconcile_user itself).  READ COMMITTED re-checks the
 * condition on the newest row version once a concurrent writer commits, so
 * a stale decision is never applied; the next run decides that user again.
 */
static void
lock_unchanged(RunResult *res, int from, int to)
{
	static LhdPlan lock_plan = {
		.sql = "SELECT u.user_id FROM lhdiscord.users u "
		"JOIN unnest($1::bigint[], $2::text[], $3::bool[]) AS x(id, status, in_scope) "
		"  ON u.user_id = x.id "
		"WHERE u.status::text = x.status AND u.in_scope = x.in_scope "
		"ORDER BY u.user_id FOR UPDATE OF u",
		.nargs = 3,
		.argtypes = {INT8ARRAYOID, TEXTARRAYOID, BOOLARRAYOID},
		.options = CURSOR_OPT_GENERIC_PLAN
	};
	int			n = to - from;
	Datum	   *ids = palloc(sizeof(Datum) * n);
	Datum	   *statuses = palloc(sizeof(Datum) * n);
	Datum	   *scopes = palloc(sizeof(Datum) * n);
	Datum		values[3];
	int			locked;
	int			row = 0;

	for (int i = 0; i < n; i++)
	{
		Change	   *c = &res->changes[from + i];

		ids[i] = Int64GetDatum(c->user_id);
		statuses[i] = CStringGetTextDatum(c->old_status);
		scopes[i] = BoolGetDatum(c->in_scope);
	}
	values[0] = PointerGetDatum(construct_array_builtin(ids, n, INT8OID));
	values[1] = PointerGetDatum(construct_array_builtin(statuses, n, TEXTOID));
	values[2] = PointerGetDatum(construct_array(scopes, n, BOOLOID, 1, true, TYPALIGN_CHAR));
	locked = lhd_exec(&lock_plan, values, NULL, false, 0);

	/* Both lists are in user_id order. */
	for (int i = from; i < to; i++)
	{
		Change	   *c = &res->changes[i];
		bool		isnull;

		if (row < locked && DatumGetInt64(lhd_getattr(row, 1, &isnull)) == c->user_id)
		{
			row++;
			continue;
		}
		/* Changed under us: this run leaves the user alone. */
		c->status_changes = c->revoke = c->strip = c->returned = false;
		c->d.exempt = c->was_exempt;
	}
}

/*
 * Apply changes [from, to): statuses, sessions, roles, exemptions, audit.
 * The arrays are passed to generic plans (a custom plan would copy them
 * into the plan as constants).
 */
static void
apply_chunk(const LhdAccessContext *ctx, RunResult *res, int from, int to)
{
	static LhdPlan status_plan = {
		.sql = "UPDATE lhdiscord.users u SET status = x.status::lhdiscord.identity_status, "
		"       session_revoked_at = CASE WHEN x.revoke THEN now() ELSE u.session_revoked_at END "
		"FROM unnest($1::bigint[], $2::text[], $3::bool[]) AS x(id, status, revoke) "
		"WHERE u.user_id = x.id",
		.nargs = 3,
		.argtypes = {INT8ARRAYOID, TEXTARRAYOID, BOOLARRAYOID},
		.options = CURSOR_OPT_GENERIC_PLAN
	};
	static LhdPlan roles_plan = {
		/* Exactly the roles read (and audited), nothing added since. */
		.sql = "DELETE FROM lhdiscord.user_roles r USING unnest($1::bigint[], $2::text[]) AS x(id, role) "
		"WHERE r.user_id = x.id AND r.role = x.role",
		.nargs = 2,
		.argtypes = {INT8ARRAYOID, TEXTARRAYOID},
		.options = CURSOR_OPT_GENERIC_PLAN
	};
	static LhdPlan exempt_plan = {
		.sql = "INSERT INTO lhdiscord.access_state (user_id, exempt_since, exemption) "
		"SELECT x.id, CASE WHEN x.exempt THEN now() END, CASE WHEN x.exempt THEN x.kind END "
		"FROM unnest($1::bigint[], $2::bool[], $3::text[]) AS x(id, exempt, kind) "
		"ON CONFLICT (user_id) DO UPDATE SET exempt_since = EXCLUDED.exempt_since, exemption = EXCLUDED.exemption",
		.nargs = 3,
		.argtypes = {INT8ARRAYOID, BOOLARRAYOID, TEXTARRAYOID},
		.options = CURSOR_OPT_GENERIC_PLAN
	};
	int			n = to - from;
	Datum	   *sid = palloc(sizeof(Datum) * (n + 1));
	Datum	   *sstatus = palloc(sizeof(Datum) * (n + 1));
	Datum	   *srevoke = palloc(sizeof(Datum) * (n + 1));
	Datum	   *eid = palloc(sizeof(Datum) * (n + 1));
	Datum	   *eflag = palloc(sizeof(Datum) * (n + 1));
	Datum	   *ekind = palloc(sizeof(Datum) * (n + 1));
	bool	   *eknull = palloc(sizeof(bool) * (n + 1));
	List	   *rid = NIL;
	List	   *rrole = NIL;
	int			ns = 0,
				ne = 0;
	AuditBatch	audit = {0};

	lock_unchanged(res, from, to);
	for (int i = from; i < to; i++)
	{
		Change	   *c = &res->changes[i];
		const char *new_status = c->d.active ? "active" : "suspended";

		if (c->status_changes || c->revoke)
		{
			sid[ns] = Int64GetDatum(c->user_id);
			sstatus[ns] = CStringGetTextDatum(new_status);
			srevoke[ns++] = BoolGetDatum(c->revoke);
		}
		if (c->strip)
			for (int k = 0; k < c->nroles; k++)
			{
				rid = lappend(rid, (void *) &c->user_id);
				rrole = lappend(rrole, c->roles[k]);
			}
		if (c->d.exempt != c->was_exempt)
		{
			eid[ne] = Int64GetDatum(c->user_id);
			eflag[ne] = BoolGetDatum(c->d.exempt);
			eknull[ne] = (c->privilege == NULL);
			ekind[ne++] = c->privilege ? CStringGetTextDatum(c->privilege) : (Datum) 0;
		}

		if (c->returned)
		{
			StringInfoData before;
			bool		first = true;

			initStringInfo(&before);
			appendStringInfoChar(&before, '{');
			lhd_json_append_str(&before, "status", c->old_status, &first);
			{
				StringInfoData roles;

				initStringInfo(&roles);
				lhd_json_append_array(&roles, c->roles, c->nroles);
				lhd_json_append_raw(&before, "roles", roles.data, &first);
			}
			appendStringInfoChar(&before, '}');
			batch_add(&audit, "entitlement.reconcile", c->user_id, before.data,
					  decision_json(c, ctx, new_status),
					  psprintf("%s -> %s by rule %s (%s)%s", c->old_status, new_status,
							   lhd_rule_name(c->d.rule), c->jml,
							   c->d.exempt ? "; exempt" : ""));
		}
		if (c->revoke)
			batch_add(&audit, "entitlement.sessions_revoked", c->user_id, NULL,
					  psprintf("{\"rule\": \"%s\", \"session_revoked\": true}", lhd_rule_name(c->d.rule)),
					  "Sessions revoked on suspension");
		if (c->d.exempt && !c->was_exempt)
		{
			StringInfoData after;
			bool		first = true;

			initStringInfo(&after);
			appendStringInfoChar(&after, '{');
			lhd_json_append_str(&after, "exemption", c->privilege, &first);
			lhd_json_append_str(&after, "rule", lhd_rule_name(c->d.rule), &first);
			lhd_json_append_str(&after, "prevented", "suspended", &first);
			lhd_json_append_raw(&after, "in_scope", c->in_scope ? "true" : "false", &first);
			lhd_json_append_raw(&after, "entitled", c->entitled ? "true" : "false", &first);
			lhd_json_append_str(&after, "mode", mode_name(ctx), &first);
			lhd_json_append_raw(&after, "snapshot_id", ctx->snapshot_id ? psprintf(INT64_FORMAT, ctx->snapshot_id) : NULL, &first);
			lhd_json_append_str(&after, "snapshot_state", snapshot_state(ctx), &first);
			appendStringInfoChar(&after, '}');
			batch_add(&audit, "entitlement.exemption", c->user_id, NULL, after.data,
					  psprintf("Suspension prevented by %s", c->privilege ? c->privilege : "privilege"));
		}
	}

	if (ns > 0)
	{
		Datum		values[3];

		values[0] = PointerGetDatum(construct_array_builtin(sid, ns, INT8OID));
		values[1] = PointerGetDatum(construct_array_builtin(sstatus, ns, TEXTOID));
		values[2] = PointerGetDatum(construct_array(srevoke, ns, BOOLOID, 1, true, TYPALIGN_CHAR));
		lhd_exec(&status_plan, values, NULL, false, 0);
	}
	if (rid != NIL)
	{
		int			nr = list_length(rid);
		Datum	   *ids = palloc(sizeof(Datum) * nr);
		Datum	   *roles = palloc(sizeof(Datum) * nr);
		Datum		values[2];
		int			k = 0;
		ListCell   *a,
				   *b;

		forboth(a, rid, b, rrole)
		{
			ids[k] = Int64GetDatum(*(int64 *) lfirst(a));
			roles[k++] = CStringGetTextDatum((char *) lfirst(b));
		}
		values[0] = PointerGetDatum(construct_array_builtin(ids, nr, INT8OID));
		values[1] = PointerGetDatum(construct_array_builtin(roles, nr, TEXTOID));
		lhd_exec(&roles_plan, values, NULL, false, 0);
	}
	if (ne > 0)
	{
		Datum		values[3];
		int			dims[1] = {ne};
		int			lbs[1] = {1};

		values[0] = PointerGetDatum(construct_array_builtin(eid, ne, INT8OID));
		values[1] = PointerGetDatum(construct_array(eflag, ne, BOOLOID, 1, true, TYPALIGN_CHAR));
		values[2] = PointerGetDatum(construct_md_array(ekind, eknull, 1, dims, lbs,
													   TEXTOID, -1, false, TYPALIGN_INT));
		lhd_exec(&exempt_plan, values, NULL, false, 0);
	}
	batch_write(&audit);
}

/* Changes applied per chunk, each in a memory context of its own. */
#define APPLY_CHUNK 5000

static void
apply_changes(const LhdAccessContext *ctx, RunResult *res)
{
	MemoryContext chunkcxt = AllocSetContextCreate(CurrentMemoryContext,
												   "lhdiscord reconcile chunk",
												   ALLOCSET_DEFAULT_SIZES);

	for (int from = 0; from < res->n; from += APPLY_CHUNK)
	{
		MemoryContext old = MemoryContextSwitchTo(chunkcxt);

		apply_chunk(ctx, res, from, Min(from + APPLY_CHUNK, res->n));
		MemoryContextSwitchTo(old);
		MemoryContextReset(chunkcxt);
	}
	MemoryContextDelete(chunkcxt);
}

/*
 * Decide and (unless dry_run) apply.  only_user = 0 reconciles everyone,
 * with the safety guard unless force.
 */
static void
run_reconcile(int64 only_user, bool dry_run, bool force, LhdAccessContext *ctx, RunResult *res)
{
	int			save_nestlevel = NewGUCNestLevel();

	memset(res, 0, sizeof(*res));

	/*
	 * The candidate query is one big pass whose cost makes the planner JIT
	 * it on every run, for no gain: off while reconcile runs.
	 */
	(void) set_config_option("jit", "off", PGC_USERSET, PGC_S_SESSION,
							 GUC_ACTION_SAVE, true, 0, false);
	lhd_access_context(ctx);
	collect_changes(ctx, only_user, res);

	if (only_user == 0 && res->leavers > GUARD_MIN_SUSPENSIONS)
	{
		res->active_users = count_active_users();
		if ((double) res->leavers * 100.0 >
			(double) lhd_reconcile_max_suspend_percent * (double) res->active_users && !force)
		{
			res->aborted = true;
			if (!dry_run)
			{
				LhdAudit	a = {0};

				a.action = "entitlement.reconcile_aborted";
				a.entity = "reconcile";
				a.after_json = psprintf("{\"would_suspend\": %d, \"active_users\": " INT64_FORMAT ", "
										"\"percent\": %.1f, \"max_suspend_percent\": %d, "
										"\"mode\": \"%s\", \"snapshot_id\": %s, \"snapshot_state\": \"%s\"}",
										res->leavers, res->active_users,
										res->active_users ? 100.0 * res->leavers / res->active_users : 100.0,
										lhd_reconcile_max_suspend_percent,
										mode_name(ctx),
										ctx->snapshot_id ? psprintf(INT64_FORMAT, ctx->snapshot_id) : "null",
										snapshot_state(ctx));
				a.description = psprintf("Reconcile aborted: it would suspend %d of " INT64_FORMAT " active users",
										 res->leavers, res->active_users);
				lhd_audit(&a);
			}
			ereport(WARNING,
					(errmsg("lhdiscord: reconcile %s: it would suspend %d of " INT64_FORMAT " active users (more than %d%%)",
							dry_run ? "would abort" : "aborted", res->leavers, res->active_users,
							lhd_reconcile_max_suspend_percent),
					 errdetail("Snapshot %s, mode %s.", snapshot_state(ctx),
							   mode_name(ctx)),
					 errhint("Check the member snapshot; run lhdiscord.reconcile(force => true) to proceed anyway.")));
		}
	}
	if (!dry_run && !res->aborted)
		apply_changes(ctx, res);
	AtEOXact_GUC(true, save_nestlevel);
}

static void
emit_rows(FunctionCallInfo fcinfo, RunResult *res)
{
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	MemoryContext old = MemoryContextSwitchTo(rsinfo->econtext->ecxt_per_query_memory);
	Oid			status_type = TupleDescAttr(rsinfo->setDesc, 4)->atttypid;

	for (int i = 0; i < res->n; i++)
	{
		Change	   *c = &res->changes[i];
		Datum		values[8];
		bool		nulls[8] = {0};

		if (!c->returned)
			continue;
		values[0] = Int64GetDatum(c->user_id);
		values[1] = BoolGetDatum(c->in_scope);
		values[2] = BoolGetDatum(c->entitled);
		values[3] = BoolGetDatum(c->privileged);
		/* old_status and new_status are lhdiscord.identity_status values. */
		values[4] = DirectFunctionCall2(enum_in, CStringGetDatum(c->old_status),
										ObjectIdGetDatum(status_type));
		values[5] = DirectFunctionCall2(enum_in, CStringGetDatum(c->d.active ? "active" : "suspended"),
										ObjectIdGetDatum(status_type));
		values[6] = CStringGetTextDatum(c->action);
		values[7] = CStringGetTextDatum(c->jml);
		tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, values, nulls);
	}
	MemoryContextSwitchTo(old);
}

/*
 * reconcile(dry_run boolean DEFAULT false, force boolean DEFAULT false)
 *	 -> SETOF (user_id, in_scope, entitled, privileged, old_status, new_status, action, jml)
 */
Datum
reconcile(PG_FUNCTION_ARGS)
{
	bool		dry_run;
	bool		force;
	LhdAccessContext ctx;
	RunResult	res;

	/* A NULL dry_run must not turn into a real run. */
	lhd_require_not_null(PG_ARGISNULL(0), "dry_run");
	lhd_require_not_null(PG_ARGISNULL(1), "force");
	dry_run = PG_GETARG_BOOL(0);
	force = PG_GETARG_BOOL(1);

	InitMaterializedSRF(fcinfo, MAT_SRF_USE_EXPECTED_DESC);
	SPI_connect();
	run_reconcile(0, dry_run, force, &ctx, &res);
	/* An aborted run changed nothing: it returns nothing (dry runs show all). */
	if (!res.aborted || dry_run)
		emit_rows(fcinfo, &res);
	SPI_finish();
	return (Datum) 0;
}

static void
require_user(int64 user_id)
{
	static LhdPlan plan = {
		.sql = "SELECT 1 FROM lhdiscord.users WHERE user_id = $1",
		.nargs = 1,
		.argtypes = {INT8OID}
	};
	Datum		values[1] = {Int64GetDatum(user_id)};

	if (lhd_exec(&plan, values, NULL, false, 1) == 0)
		lhd_raise_no_user(user_id);
}

/* reconcile_user(user_id bigint) -> SETOF the same row type (0 or 1 rows) */
Datum
reconcile_user(PG_FUNCTION_ARGS)
{
	int64		user_id;
	LhdAccessContext ctx;
	RunResult	res;

	lhd_require_not_null(PG_ARGISNULL(0), "user_id");
	user_id = PG_GETARG_INT64(0);
	InitMaterializedSRF(fcinfo, MAT_SRF_USE_EXPECTED_DESC);
	SPI_connect();
	require_user(user_id);
	run_reconcile(user_id, false, true, &ctx, &res);
	emit_rows(fcinfo, &res);
	SPI_finish();
	return (Datum) 0;
}

/* For the in_scope trigger: reconcile one user; returns rows changed. */
int
lhd_reconcile_user_internal(int64 user_id)
{
	LhdAccessContext ctx;
	RunResult	res;
	int			changed = 0;

	SPI_connect();
	run_reconcile(user_id, false, true, &ctx, &res);
	for (int i = 0; i < res.n; i++)
		if (res.changes[i].returned)
			changed++;
	SPI_finish();
	return changed;
}

/*
 * For the Gateway worker: reconcile one user because of a member event;
 * evidence (a JSON object naming the event and its sequence number) goes
 * into the audit row of any change.  Returns rows changed.
 */
int
lhd_reconcile_user_because(int64 user_id, const char *evidence)
{
	int			changed;

	reconcile_evidence = evidence;
	PG_TRY();
	{
		changed = lhd_reconcile_user_internal(user_id);
	}
	PG_FINALLY();
	{
		reconcile_evidence = NULL;
	}
	PG_END_TRY();
	return changed;
}

/* For the worker's schedule: a full reconcile with the guard. */
int64
lhd_reconcile_all_internal(void)
{
	LhdAccessContext ctx;
	RunResult	res;
	int64		changed = 0;

	SPI_connect();
	run_reconcile(0, false, false, &ctx, &res);
	if (!res.aborted)
		for (int i = 0; i < res.n; i++)
			if (res.changes[i].returned)
				changed++;
	SPI_finish();
	return res.aborted ? -1 : changed;
}

/* ---------- restore_user ---------- */

/*
 * restore_user(user_id bigint, actor_id bigint) -> boolean
 * Sets a suspended user active again, gives back the portal roles removed
 * since the last suspension (as recorded in the audit log), audits the
 * restore.  Returns false (and writes nothing) for a user already active.
 * The actor must hold portal role admin (42501 otherwise, nothing written).
 */
Datum
restore_user(PG_FUNCTION_ARGS)
{
	static LhdPlan user_plan = {
		.sql = "SELECT status::text FROM lhdiscord.users WHERE user_id = $1 FOR UPDATE",
		.nargs = 1,
		.argtypes = {INT8OID}
	};
	static LhdPlan removed_plan = {
		/* Roles removed by the last transition to suspended and after it. */
		.sql = "SELECT DISTINCT r.role FROM lhdiscord.audit_log a, "
		"       jsonb_array_elements_text(a.after_json->'roles_removed') AS r(role) "
		"WHERE a.action = 'entitlement.reconcile' AND a.subject_user_id = $1 "
		"  AND a.id >= coalesce((SELECT max(id) FROM lhdiscord.audit_log "
		"                        WHERE action = 'entitlement.reconcile' AND subject_user_id = $1 "
		"                          AND after_json->>'old_status' = 'active' "
		"                          AND after_json->>'new_status' = 'suspended'), 0) "
		"  AND a.id > coalesce((SELECT max(id) FROM lhdiscord.audit_log "
		"                       WHERE action = 'entitlement.restore' AND subject_user_id = $1), 0) "
		"ORDER BY 1",
		.nargs = 1,
		.argtypes = {INT8OID}
	};
	static LhdPlan activate_plan = {
		.sql = "UPDATE lhdiscord.users SET status = 'active' WHERE user_id = $1",
		.nargs = 1,
		.argtypes = {INT8OID}
	};
	static LhdPlan grant_plan = {
		.sql = "INSERT INTO lhdiscord.user_roles (user_id, role) SELECT $1, unnest($2::text[]) "
		"ON CONFLICT DO NOTHING",
		.nargs = 2,
		.argtypes = {INT8OID, TEXTARRAYOID}
	};
	int64		user_id;
	int64		actor_id;
	char	   *status;
	Datum		values[2];
	int			n;
	char	  **roles;
	StringInfoData after;
	StringInfoData list;
	LhdAudit	a = {0};

	lhd_require_not_null(PG_ARGISNULL(0), "user_id");
	lhd_require_not_null(PG_ARGISNULL(1), "actor_id");
	user_id = PG_GETARG_INT64(0);
	actor_id = PG_GETARG_INT64(1);

	SPI_connect();
	/* Authorise before revealing anything about the user. */
	lhd_require_admin(actor_id, "Only an admin can restore a suspended user.");
	values[0] = Int64GetDatum(user_id);
	if (lhd_exec(&user_plan, values, NULL, false, 1) == 0)
		lhd_raise_no_user(user_id);
	status = lhd_getattr_text(0, 1);
	if (strcmp(status, "disabled") == 0)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("user " INT64_FORMAT " is disabled", user_id),
				 errdetail("Only suspended users can be restored; a disabled identity is the application's decision.")));
	if (strcmp(status, "active") == 0)
	{
		SPI_finish();
		PG_RETURN_BOOL(false);
	}

	n = lhd_exec(&removed_plan, values, NULL, false, 0);
	roles = palloc(sizeof(char *) * (n + 1));
	for (int i = 0; i < n; i++)
		roles[i] = lhd_getattr_text(i, 1);

	lhd_exec(&activate_plan, values, NULL, false, 0);
	if (n > 0)
	{
		values[1] = lhd_text_array(roles, n);
		lhd_exec(&grant_plan, values, NULL, false, 0);
	}

	initStringInfo(&list);
	lhd_json_append_array(&list, roles, n);
	initStringInfo(&after);
	appendStringInfo(&after, "{\"status\": \"active\", \"roles_restored\": %s}", list.data);
	a.action = "entitlement.restore";
	a.actor_user_id = actor_id;
	a.subject_user_id = user_id;
	a.entity = "users";
	a.entity_pk = psprintf(INT64_FORMAT, user_id);
	a.before_json = psprintf("{\"status\": \"%s\"}", status);
	a.after_json = after.data;
	a.description = psprintf("Restored by user " INT64_FORMAT " with %d portal role(s)", actor_id, n);
	lhd_audit(&a);
	SPI_finish();
	PG_RETURN_BOOL(true);
}
