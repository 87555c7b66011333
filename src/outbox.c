/*-------------------------------------------------------------------------
 *
 * outbox.c
 *	  Queueing work into the durable outbox.
 *
 * Owns how Discord work enters lhdiscord.outbox from the application's
 * transaction.  Role convergence is queued as *desired state*: at most one
 * live (pending or in-flight) convergence job exists per Discord user, and a
 * later change folds into it by bumping its generation instead of adding a
 * row.  The job is resolved against the desired role set when it runs, so
 * any number of changes collapse into one convergence and out-of-order or
 * repeated changes cannot leave wrong roles behind.  Each job has a lane:
 * a convergence that takes access away is urgent, one queued for everyone
 * (a role_map change) is bulk, one user's change is interactive.  Because
 * the queue is an ordinary logged table written in the caller's
 * transaction, a rollback queues nothing and a crash loses nothing.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "catalog/namespace.h"
#include "catalog/pg_type.h"
#include "fmgr.h"
#include "utils/builtins.h"
#include "utils/lsyscache.h"
#include "utils/timestamp.h"

#include "lhdiscord.h"

PG_FUNCTION_INFO_V1(prune_outbox);

/*
 * A folded change keeps the highest lane of its changes (the enum sorts
 * urgent first).
 */
#define CONVERGENCE_UPSERT \
	"ON CONFLICT (discord_user_id) WHERE kind = 'roles' AND state IN ('pending', 'in_flight') " \
	"DO UPDATE SET generation = lhdiscord.outbox.generation + 1, " \
	"              user_id = EXCLUDED.user_id, reason = EXCLUDED.reason, updated_at = now(), " \
	"              lane = LEAST(lhdiscord.outbox.lane, EXCLUDED.lane), " \
	"              payload = CASE WHEN EXCLUDED.payload ? 'retired_role_ids' " \
	"                 THEN jsonb_set(lhdiscord.outbox.payload, '{retired_role_ids}', " \
	"                                coalesce(lhdiscord.outbox.payload->'retired_role_ids', '[]') " \
	"                                || (EXCLUDED.payload->'retired_role_ids')) " \
	"                 ELSE lhdiscord.outbox.payload END"

/*
 * Before ALTER EXTENSION lhdiscord UPDATE to 0.6.0 the outbox has no lane
 * (nor retired role ids): a new library next to an old schema must go on
 * queueing work, as 0.5.0 did, until the update.
 */
#define CONVERGENCE_UPSERT_0_5 \
	"ON CONFLICT (discord_user_id) WHERE kind = 'roles' AND state IN ('pending', 'in_flight') " \
	"DO UPDATE SET generation = lhdiscord.outbox.generation + 1, " \
	"              user_id = EXCLUDED.user_id, reason = EXCLUDED.reason, updated_at = now()"

/* Has the outbox its 0.6.0 columns?  (A syscache lookup or two.) */
bool
lhd_outbox_has_lanes(void)
{
	Oid			nsp = get_namespace_oid("lhdiscord", true);
	Oid			rel = OidIsValid(nsp) ? get_relname_relid("outbox", nsp) : InvalidOid;

	return OidIsValid(rel) && get_attnum(rel, "lane") != InvalidAttrNumber;
}

/*
 * The lane of a convergence: urgent when it takes access away (the account
 * is brigged or gone, the user is not active or in the brig), else the
 * caller's lane.  a and u are the account and its user (outer joined).
 */
#define CONVERGENCE_LANE_EXPR(otherwise) \
	"CASE WHEN a.status IS DISTINCT FROM 'active'::lhdiscord.account_status " \
	"       OR u.status IS DISTINCT FROM 'active'::lhdiscord.identity_status " \
	"       OR u.in_brig IS DISTINCT FROM false " \
	"     THEN 'urgent'::lhdiscord.outbox_lane ELSE " otherwise " END"
#define CONVERGENCE_LANE(otherwise) \
	CONVERGENCE_LANE_EXPR("'" otherwise "'::lhdiscord.outbox_lane")

/*
 * Queue (or fold into) the convergence of one Discord user's roles, in lane
 * (unless it takes access away: then urgent).
 */
void
lhd_enqueue_convergence_in_lane(const char *discord_user_id, int64 user_id,
								const char *reason, const char *lane)
{
	static LhdPlan plan = {
		.sql = "INSERT INTO lhdiscord.outbox (kind, discord_user_id, user_id, reason, lane) "
		"SELECT 'roles', v.id, v.uid, v.reason, " CONVERGENCE_LANE_EXPR("v.lane::lhdiscord.outbox_lane") " "
		"FROM (VALUES ($1, $2, $3, $4)) AS v(id, uid, reason, lane) "
		"LEFT JOIN lhdiscord.discord_accounts a ON a.discord_user_id = v.id "
		"LEFT JOIN lhdiscord.users u ON u.user_id = a.user_id " CONVERGENCE_UPSERT,
		.nargs = 4,
		.argtypes = {TEXTOID, INT8OID, TEXTOID, TEXTOID}
	};
	static LhdPlan plan_0_5 = {
		.sql = "INSERT INTO lhdiscord.outbox (kind, discord_user_id, user_id, reason) "
		"VALUES ('roles', $1, $2, $3) " CONVERGENCE_UPSERT_0_5,
		.nargs = 4,
		.argtypes = {TEXTOID, INT8OID, TEXTOID, TEXTOID}
	};
	Datum		values[4];
	char		nulls[4] = {' ', ' ', ' ', ' '};

	values[0] = CStringGetTextDatum(discord_user_id);
	values[1] = Int64GetDatum(user_id);
	if (user_id == 0)
		nulls[1] = 'n';
	values[2] = CStringGetTextDatum(reason ? reason : "lhdiscord");
	values[3] = CStringGetTextDatum(lane);
	lhd_exec(lhd_outbox_has_lanes() ? &plan : &plan_0_5, values, nulls, false, 0);
}

/*
 * The lane a caller passed as argument argno (notify, link_account): NULL
 * when absent or NULL (the default lane).  A caller may demote its work to
 * bulk (a mass announcement, an import) or keep it interactive; urgent is
 * for removals that take access away, which lhdiscord chooses itself.
 */
char *
lhd_require_caller_lane(FunctionCallInfo fcinfo, int argno)
{
	char	   *lane;

	if (PG_NARGS() <= argno || PG_ARGISNULL(argno))
		return NULL;
	lane = DatumGetCString(DirectFunctionCall1(enum_out, PG_GETARG_DATUM(argno)));
	if (strcmp(lane, "urgent") == 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("lane urgent is reserved for removals that take access away"),
				 errhint("Pass interactive or bulk; lhdiscord queues brig, unlink, revoke and suspension work as urgent itself.")));
	return lane;
}

/* One user's action: the interactive lane (urgent when it takes access away). */
void
lhd_enqueue_convergence(const char *discord_user_id, int64 user_id, const char *reason)
{
	lhd_enqueue_convergence_in_lane(discord_user_id, user_id, reason, "interactive");
}

/* Queue (or fold into) the convergence of every active Discord account. */
void
lhd_enqueue_all_convergences(const char *reason)
{
	static LhdPlan plan = {
		.sql = "INSERT INTO lhdiscord.outbox (kind, discord_user_id, user_id, reason, lane) "
		"SELECT 'roles', a.discord_user_id, a.user_id, $1, " CONVERGENCE_LANE("bulk") " "
		"FROM lhdiscord.discord_accounts a JOIN lhdiscord.users u ON u.user_id = a.user_id "
		"WHERE a.status = 'active' " CONVERGENCE_UPSERT,
		.nargs = 1,
		.argtypes = {TEXTOID}
	};
	static LhdPlan plan_0_5 = {
		.sql = "INSERT INTO lhdiscord.outbox (kind, discord_user_id, user_id, reason) "
		"SELECT 'roles', a.discord_user_id, a.user_id, $1 "
		"FROM lhdiscord.discord_accounts a WHERE a.status = 'active' " CONVERGENCE_UPSERT_0_5,
		.nargs = 1,
		.argtypes = {TEXTOID}
	};
	Datum		values[1] = {CStringGetTextDatum(reason)};

	lhd_exec(lhd_outbox_has_lanes() ? &plan : &plan_0_5, values, NULL, false, 0);
}

/*
 * A role_map key was mapped, remapped or unmapped: queue (bulk) the
 * convergence of the members it can affect -- those whose desired set may
 * include the key (level, verified, department, rank, or a portal role of
 * that name), and those whose last applied state holds the old role id --
 * instead of every account.  retired_role_id, when the key moved from that
 * role to another, travels in the job's payload (retired_role_ids), so the
 * convergence takes it off the members that hold it.  Returns the number
 * queued.
 */
int
lhd_enqueue_role_key_change(const char *key, const char *retired_role_id, const char *reason)
{
	static LhdPlan plan = {
		.sql = "INSERT INTO lhdiscord.outbox (kind, discord_user_id, user_id, reason, lane, payload) "
		"SELECT 'roles', a.discord_user_id, a.user_id, $3, " CONVERGENCE_LANE("bulk") ", "
		"       CASE WHEN $2 IS NULL THEN '{}'::jsonb "
		"            ELSE jsonb_build_object('retired_role_ids', jsonb_build_array($2)) END "
		"FROM lhdiscord.discord_accounts a JOIN lhdiscord.users u ON u.user_id = a.user_id "
		"WHERE a.status = 'active' AND ("
		"      $1 = 'verified' "
		"   OR $1 = u.membership_level::text "
		"   OR $1 = 'staff_' || u.staff_department::text "
		"   OR $1 = 'rank_' || u.staff_rank::text "
		"   OR EXISTS (SELECT 1 FROM lhdiscord.user_roles r WHERE r.user_id = u.user_id AND r.role = $1) "
		"   OR EXISTS (SELECT 1 FROM lhdiscord.role_state s "
		"               WHERE s.discord_user_id = a.discord_user_id AND $2 = ANY (s.role_ids))) "
		CONVERGENCE_UPSERT,
		.nargs = 3,
		.argtypes = {TEXTOID, TEXTOID, TEXTOID}
	};
	Datum		values[3];
	char		nulls[3] = {' ', ' ', ' '};

	values[0] = CStringGetTextDatum(key);
	values[1] = retired_role_id ? CStringGetTextDatum(retired_role_id) : (Datum) 0;
	if (retired_role_id == NULL)
		nulls[1] = 'n';
	values[2] = CStringGetTextDatum(reason);
	return lhd_exec(&plan, values, nulls, false, 0);
}

/*
 * Queue the convergence of every active Discord account of a portal user
 * and write its audit rows (this is the trigger's hot path; a single
 * combined CTE statement measured no faster than these two).  The audit rows are written only when at least one account was
 * queued; their after_json gets "accounts": n and "{n}" in their
 * description becomes n.  Returns n.
 */
int
lhd_enqueue_user_convergence(int64 user_id, const char *reason, int naudits, const LhdAudit *audits)
{
	static LhdPlan plan = {
		.sql = "INSERT INTO lhdiscord.outbox (kind, discord_user_id, user_id, reason, lane) "
		"SELECT 'roles', a.discord_user_id, a.user_id, $2, " CONVERGENCE_LANE("interactive") " "
		"FROM lhdiscord.discord_accounts a JOIN lhdiscord.users u ON u.user_id = a.user_id "
		"WHERE a.user_id = $1 AND a.status = 'active' " CONVERGENCE_UPSERT,
		.nargs = 2,
		.argtypes = {INT8OID, TEXTOID}
	};
	static LhdPlan plan_0_5 = {
		.sql = "INSERT INTO lhdiscord.outbox (kind, discord_user_id, user_id, reason) "
		"SELECT 'roles', a.discord_user_id, a.user_id, $2 "
		"FROM lhdiscord.discord_accounts a "
		"WHERE a.user_id = $1 AND a.status = 'active' " CONVERGENCE_UPSERT_0_5,
		.nargs = 2,
		.argtypes = {INT8OID, TEXTOID}
	};
	Datum		values[2];
	int			n;

	values[0] = Int64GetDatum(user_id);
	values[1] = CStringGetTextDatum(reason ? reason : "lhdiscord");
	n = lhd_exec(lhd_outbox_has_lanes() ? &plan : &plan_0_5, values, NULL, false, 0);
	if (n > 0)
		for (int i = 0; i < naudits; i++)
		{
			LhdAudit	a = audits[i];
			StringInfoData buf;
			const char *d = a.description ? a.description : "";
			const char *p = strstr(d, "{n}");
			const char *after = a.after_json ? a.after_json : "{}";

			/* after_json is an object literal: put the account count first. */
			initStringInfo(&buf);
			appendStringInfo(&buf, "{\"accounts\": %d%s%s", n,
							 strlen(after) > 2 ? ", " : "", after + 1);
			a.after_json = buf.data;
			if (p)
				a.description = psprintf("%.*s%d%s", (int) (p - d), d, n, p + 3);
			a.subject_user_id = user_id;
			a.entity = "users";
			a.entity_pk = psprintf(INT64_FORMAT, user_id);
			lhd_audit(&a);
		}
	return n;
}

/*
 * Delete finished (done, failed, dead) jobs older than retention_seconds;
 * 0 keeps everything.  Returns the number deleted.
 */
int64
lhd_prune_outbox(int retention_seconds)
{
	static LhdPlan plan = {
		.sql = "DELETE FROM lhdiscord.outbox WHERE finished_at < now() - $1 * interval '1 second'",
		.nargs = 1,
		.argtypes = {INT4OID}
	};
	Datum		values[1] = {Int32GetDatum(retention_seconds)};

	if (retention_seconds <= 0)
		return 0;
	return lhd_exec(&plan, values, NULL, false, 0);
}

/*
 * prune_outbox(older_than interval DEFAULT NULL) -> bigint
 * Deletes finished jobs older than older_than (default:
 * lhdiscord.outbox_retention); the worker does this on its own.
 */
Datum
prune_outbox(PG_FUNCTION_ARGS)
{
	int			seconds = lhd_outbox_retention;
	int64		n;
	int			nestlevel;

	if (!PG_ARGISNULL(0))
	{
		Interval   *iv = PG_GETARG_INTERVAL_P(0);
		double		secs = (double) iv->time / USECS_PER_SEC +
			(double) iv->day * SECS_PER_DAY + (double) iv->month * DAYS_PER_MONTH * SECS_PER_DAY;

		if (secs < 0 || secs > INT_MAX)
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("older_than must be between 0 and %d seconds", INT_MAX)));
		seconds = (int) secs;
		if (seconds == 0)
			seconds = 1;		/* 0 would mean "keep everything" */
	}
	nestlevel = lhd_pin_search_path();
	SPI_connect();
	n = lhd_prune_outbox(seconds);
	SPI_finish();
	lhd_unpin_search_path(nestlevel);
	PG_RETURN_INT64(n);
}
