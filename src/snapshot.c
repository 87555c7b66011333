/*-------------------------------------------------------------------------
 *
 * snapshot.c
 *	  Guild member snapshots: the evidence of Discord-leading entitlement.
 *
 * Owns load_snapshot() (for applications that scan elsewhere, and tests),
 * request_member_scan() (queues the worker's paginated scan, jobs_scan.c),
 * accept_snapshot(), prune_snapshots() (retention: lhdiscord.snapshot_retention),
 * and what both paths share: storing a page of List
 * Guild Members objects and completing a snapshot.  A snapshot is complete
 * only when every page arrived; a complete snapshot whose member count fell
 * more than lhdiscord.snapshot_max_shrink_percent below the previous trusted
 * one is kept but not trusted until accept_snapshot(): an empty or partial
 * listing must never look like "everyone left".
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "catalog/pg_type.h"
#include "fmgr.h"
#include "miscadmin.h"
#include <limits.h>

#include "utils/builtins.h"
#include "utils/jsonb.h"
#include "utils/timestamp.h"

#include "lhdiscord.h"
#include "lhd_access.h"

PG_FUNCTION_INFO_V1(load_snapshot);
PG_FUNCTION_INFO_V1(accept_snapshot);
PG_FUNCTION_INFO_V1(request_member_scan);
PG_FUNCTION_INFO_V1(prune_snapshots);

static int64 lhd_prune_snapshots_spi(int retention_seconds);

/*
 * Store guild members (a jsonb array, as List Guild Members returns them);
 * returns members added.  Members already stored are skipped.
 */
int
lhd_snapshot_add_members(int64 snapshot_id, Datum members)
{
	static LhdPlan insert_plan = {
		.sql = "INSERT INTO lhdiscord.snapshot_members (snapshot_id, discord_user_id, role_ids) "
		"SELECT $1, m->'user'->>'id', "
		"       ARRAY(SELECT jsonb_array_elements_text(coalesce(m->'roles', '[]'))) "
		"FROM jsonb_array_elements($2) AS m "
		"ON CONFLICT (snapshot_id, discord_user_id) DO NOTHING",
		.nargs = 2,
		.argtypes = {INT8OID, JSONBOID}
	};
	static LhdPlan count_plan = {
		.sql = "UPDATE lhdiscord.member_snapshots SET member_count = member_count + $2 WHERE id = $1",
		.nargs = 2,
		.argtypes = {INT8OID, INT4OID}
	};
	Datum		values[2] = {Int64GetDatum(snapshot_id), members};
	int			n = lhd_exec(&insert_plan, values, NULL, false, 0);

	values[1] = Int32GetDatum(n);
	lhd_exec(&count_plan, values, NULL, false, 0);
	return n;
}

/*
 * Mark a snapshot complete and decide whether it is trusted (shrink
 * guard).  Returns trusted.
 */
bool
lhd_snapshot_complete(int64 snapshot_id, const char *source)
{
	static LhdPlan prev_plan = {
		.sql = "SELECT s.member_count, p.id, p.member_count FROM lhdiscord.member_snapshots s "
		"LEFT JOIN LATERAL (SELECT id, member_count FROM lhdiscord.member_snapshots "
		"                    WHERE complete AND trusted AND id <> s.id "
		"                    ORDER BY taken_at DESC, id DESC LIMIT 1) p ON true "
		"WHERE s.id = $1",
		.nargs = 1,
		.argtypes = {INT8OID}
	};
	static LhdPlan complete_plan = {
		.sql = "UPDATE lhdiscord.member_snapshots SET complete = true, trusted = $2, finished_at = now() "
		"WHERE id = $1",
		.nargs = 2,
		.argtypes = {INT8OID, BOOLOID}
	};
	Datum		values[2] = {Int64GetDatum(snapshot_id), (Datum) 0};
	bool		isnull;
	int			count;
	int			prev = 0;
	int64		prev_id = 0;
	bool		trusted = true;

	lhd_exec(&prev_plan, values, NULL, false, 1);
	count = DatumGetInt32(lhd_getattr(0, 1, &isnull));
	{
		Datum		d = lhd_getattr(0, 2, &isnull);

		if (!isnull)
		{
			prev_id = DatumGetInt64(d);
			prev = DatumGetInt32(lhd_getattr(0, 3, &isnull));
		}
	}
	/* Shrunk by more than the allowed percentage: hold it back. */
	if (prev > 0 &&
		(double) count < (double) prev * (100.0 - lhd_snapshot_max_shrink_percent) / 100.0)
		trusted = false;

	values[1] = BoolGetDatum(trusted);
	lhd_exec(&complete_plan, values, NULL, false, 0);

	if (!trusted)
	{
		LhdAudit	a = {0};

		a.action = "entitlement.snapshot_held";
		a.entity = "member_snapshots";
		a.entity_pk = psprintf(INT64_FORMAT, snapshot_id);
		a.after_json = psprintf("{\"snapshot_id\": " INT64_FORMAT ", \"member_count\": %d, "
								"\"previous_snapshot_id\": " INT64_FORMAT ", \"previous_member_count\": %d, "
								"\"max_shrink_percent\": %d, \"source\": \"%s\"}",
								snapshot_id, count, prev_id, prev,
								lhd_snapshot_max_shrink_percent, source);
		a.description = psprintf("Snapshot " INT64_FORMAT " shrank from %d to %d members; not trusted until accepted",
								 snapshot_id, prev, count);
		lhd_audit(&a);
		ereport(WARNING,
				(errmsg("lhdiscord: member snapshot " INT64_FORMAT " is not trusted: %d members, previous trusted snapshot had %d",
						snapshot_id, count, prev),
				 errhint("If the guild really shrank, run SELECT lhdiscord.accept_snapshot(" INT64_FORMAT ").",
						 snapshot_id)));
	}
	return trusted;
}

/* A new, empty snapshot from source (scan, load or gateway); returns its id. */
int64
lhd_snapshot_new(TimestampTz taken_at, const char *source)
{
	static LhdPlan plan = {
		.sql = "INSERT INTO lhdiscord.member_snapshots (taken_at, source) VALUES ($1, $2) RETURNING id",
		.nargs = 2,
		.argtypes = {TIMESTAMPTZOID, TEXTOID}
	};
	Datum		values[2] = {TimestampTzGetDatum(taken_at), CStringGetTextDatum(source)};
	bool		isnull;

	lhd_exec(&plan, values, NULL, false, 1);
	return DatumGetInt64(lhd_getattr(0, 1, &isnull));
}

/*
 * load_snapshot(members jsonb, taken_at timestamptz DEFAULT now()) -> bigint
 * Stores a complete snapshot from the shape List Guild Members returns:
 * [{"user": {"id": "..."}, "roles": ["..."]}, ...].
 */
Datum
load_snapshot(PG_FUNCTION_ARGS)
{
	static LhdPlan check_plan = {
		/*
		 * The first element that is not a valid guild member object (kind
		 * "shape"), or whose user id or a role id is not a canonical
		 * snowflake (kind "user" or "role", with the value).
		 */
		.sql = "SELECT i, CASE WHEN shape THEN 'shape' WHEN uid !~ '" LHD_SNOWFLAKE_REGEX "' THEN 'user' ELSE 'role' END, "
		"       CASE WHEN shape THEN NULL WHEN uid !~ '" LHD_SNOWFLAKE_REGEX "' THEN uid ELSE bad_role END "
		"FROM (SELECT i, m->'user'->>'id' AS uid, "
		"             (jsonb_typeof(m) <> 'object' "
		"              OR coalesce(jsonb_typeof(m->'user'->'id'), '') NOT IN ('string', 'number') "
		"              OR (m ? 'roles' AND jsonb_typeof(m->'roles') <> 'array') "
		"              OR EXISTS (SELECT 1 FROM jsonb_array_elements(CASE WHEN jsonb_typeof(m->'roles') = 'array' "
		"                                                                 THEN m->'roles' ELSE '[]' END) r "
		"                         WHERE jsonb_typeof(r) <> 'string')) AS shape, "
		"             (SELECT r #>> '{}' FROM jsonb_array_elements(CASE WHEN jsonb_typeof(m->'roles') = 'array' "
		"                                                               THEN m->'roles' ELSE '[]' END) r "
		"               WHERE jsonb_typeof(r) = 'string' AND (r #>> '{}') !~ '" LHD_SNOWFLAKE_REGEX "' LIMIT 1) AS bad_role "
		"        FROM jsonb_array_elements($1) WITH ORDINALITY AS e(m, i)) x "
		"WHERE shape OR uid !~ '" LHD_SNOWFLAKE_REGEX "' OR bad_role IS NOT NULL "
		"ORDER BY i LIMIT 1",
		.nargs = 1,
		.argtypes = {JSONBOID}
	};
	static LhdPlan dup_plan = {
		.sql = "SELECT m->'user'->>'id' FROM jsonb_array_elements($1) m "
		"GROUP BY 1 HAVING count(*) > 1 LIMIT 1",
		.nargs = 1,
		.argtypes = {JSONBOID}
	};
	Jsonb	   *members;
	TimestampTz taken_at;
	int64		id;
	Datum		values[1];

	lhd_require_not_null(PG_ARGISNULL(0), "members");
	members = PG_GETARG_JSONB_P(0);
	/* A NULL taken_at must not pass for a fresh snapshot. */
	lhd_require_not_null(PG_ARGISNULL(1), "taken_at");
	taken_at = PG_GETARG_TIMESTAMPTZ(1);
	if (!JB_ROOT_IS_ARRAY(members) || JB_ROOT_IS_SCALAR(members))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("members must be a JSON array of guild member objects"),
				 errhint("Use the shape List Guild Members returns: [{\"user\": {\"id\": \"...\"}, \"roles\": [\"...\"]}, ...].")));
	if (taken_at > GetCurrentTimestamp() + 5 * USECS_PER_MINUTE)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("taken_at must not be in the future")));

	SPI_connect();
	values[0] = PointerGetDatum(members);
	if (lhd_exec(&check_plan, values, NULL, true, 1) > 0)
	{
		char	   *index = lhd_getattr_text(0, 1);
		char	   *kind = lhd_getattr_text(0, 2);

		if (strcmp(kind, "shape") == 0)
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("members[%s] is not a guild member object", index),
					 errdetail("Each element needs user.id and an optional roles array of Discord id strings.")));
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_TEXT_REPRESENTATION),
				 errmsg("invalid Discord %s id in members[%s]: \"%s\"",
						strcmp(kind, "user") == 0 ? "user" : "role", index, lhd_getattr_text(0, 3)),
				 errdetail("%s", LHD_SNOWFLAKE_RULE)));
	}

	id = lhd_snapshot_new(taken_at, "load");
	/* Fewer stored than given: a duplicate, named by the error (it undoes all). */
	if ((uint32) lhd_snapshot_add_members(id, PointerGetDatum(members)) < JB_ROOT_COUNT(members) &&
		lhd_exec(&dup_plan, values, NULL, true, 1) > 0)
		ereport(ERROR,
				(errcode(ERRCODE_UNIQUE_VIOLATION),
				 errmsg("member %s appears more than once", lhd_getattr_text(0, 1))));
	lhd_snapshot_complete(id, "load");
	lhd_prune_snapshots_spi(lhd_snapshot_retention);
	SPI_finish();
	PG_RETURN_INT64(id);
}

/*
 * accept_snapshot(id bigint) -> boolean
 * Trust a complete snapshot the shrink guard held back.  false when it was
 * trusted already.
 */
Datum
accept_snapshot(PG_FUNCTION_ARGS)
{
	static LhdPlan get_plan = {
		.sql = "SELECT complete, trusted, member_count FROM lhdiscord.member_snapshots WHERE id = $1 FOR UPDATE",
		.nargs = 1,
		.argtypes = {INT8OID}
	};
	static LhdPlan accept_plan = {
		.sql = "UPDATE lhdiscord.member_snapshots SET trusted = true, accepted_at = now(), "
		"       accepted_by = $2 WHERE id = $1",
		.nargs = 2,
		.argtypes = {INT8OID, TEXTOID}
	};
	int64		id;
	char	   *role;
	Datum		values[2];
	bool		isnull;
	LhdAudit	a = {0};

	lhd_require_not_null(PG_ARGISNULL(0), "id");
	id = PG_GETARG_INT64(0);
	SPI_connect();
	values[0] = Int64GetDatum(id);
	if (lhd_exec(&get_plan, values, NULL, false, 1) == 0)
		ereport(ERROR,
				(errcode(ERRCODE_NO_DATA_FOUND),
				 errmsg("snapshot " INT64_FORMAT " does not exist", id)));
	if (!DatumGetBool(lhd_getattr(0, 1, &isnull)))
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("snapshot " INT64_FORMAT " is incomplete", id),
				 errdetail("A snapshot is complete only when every page of the member listing arrived; an incomplete one is never used.")));
	if (DatumGetBool(lhd_getattr(0, 2, &isnull)))
	{
		SPI_finish();
		PG_RETURN_BOOL(false);
	}
	role = lhd_acting_role();
	values[1] = CStringGetTextDatum(role);
	lhd_exec(&accept_plan, values, NULL, false, 0);
	a.action = "entitlement.snapshot_accepted";
	a.entity = "member_snapshots";
	a.entity_pk = psprintf(INT64_FORMAT, id);
	a.after_json = psprintf("{\"snapshot_id\": " INT64_FORMAT ", \"trusted\": true}", id);
	a.description = psprintf("Snapshot " INT64_FORMAT " accepted by %s", id, role);
	lhd_audit(&a);
	SPI_finish();
	PG_RETURN_BOOL(true);
}

/*
 * request_member_scan() -> bigint
 * Queue a paginated guild member scan; returns the snapshot it will fill.
 * While a scan is pending or running, returns that scan's snapshot instead
 * of queueing another: any number of requests cost one scan.  Concurrent
 * requests serialise on a transaction-scoped advisory lock.
 */
Datum
request_member_scan(PG_FUNCTION_ARGS)
{
	static LhdPlan lock_plan = {
		.sql = "SELECT pg_catalog.pg_advisory_xact_lock(pg_catalog.hashtext('lhdiscord.request_member_scan'))",
		.nargs = 0
	};
	static LhdPlan live_plan = {
		.sql = "SELECT (payload->>'snapshot_id')::bigint FROM lhdiscord.outbox "
		"WHERE kind = 'member_scan' AND state IN ('pending', 'in_flight') "
		"  AND payload ? 'snapshot_id' "
		"ORDER BY id LIMIT 1",
		.nargs = 0
	};
	/* A scan is bulk work (0.6.0 on; before the update the outbox has no lane). */
	static LhdPlan job_plan = {
		.sql = "INSERT INTO lhdiscord.outbox (kind, payload, reason, lane) "
		"VALUES ('member_scan', jsonb_build_object('snapshot_id', $1), 'Guild member scan', 'bulk')",
		.nargs = 1,
		.argtypes = {INT8OID}
	};
	static LhdPlan job_plan_0_5 = {
		.sql = "INSERT INTO lhdiscord.outbox (kind, payload, reason) "
		"VALUES ('member_scan', jsonb_build_object('snapshot_id', $1), 'Guild member scan')",
		.nargs = 1,
		.argtypes = {INT8OID}
	};
	int64		id;
	Datum		values[1];
	bool		isnull;

	if (lhd_guild_id == NULL || lhd_guild_id[0] == '\0')
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("lhdiscord.guild_id is not set"),
				 errhint("Set lhdiscord.guild_id to the guild whose members are scanned.")));
	SPI_connect();
	lhd_exec(&lock_plan, NULL, NULL, false, 0);
	if (lhd_exec(&live_plan, NULL, NULL, false, 1) > 0)
	{
		Datum		d = lhd_getattr(0, 1, &isnull);

		if (!isnull)
		{
			id = DatumGetInt64(d);
			SPI_finish();
			PG_RETURN_INT64(id);
		}
	}
	id = lhd_snapshot_new(GetCurrentTransactionStartTimestamp(), "scan");
	values[0] = Int64GetDatum(id);
	lhd_exec(lhd_outbox_has_lanes() ? &job_plan : &job_plan_0_5, values, NULL, false, 0);
	lhd_prune_snapshots_spi(lhd_snapshot_retention);
	SPI_finish();
	PG_RETURN_INT64(id);
}

/*
 * Delete snapshots stored more than retention_seconds ago (0 = keep all),
 * but never the latest trusted one (the evidence reconcile uses), the
 * latest complete one (it may be waiting for accept_snapshot()), or one a
 * live member_scan job is filling.  Audits entitlement.snapshots_pruned
 * when it removed any.  Caller must be connected to SPI.
 */
static int64
lhd_prune_snapshots_spi(int retention_seconds)
{
	static LhdPlan prune_plan = {
		.sql = "WITH keep AS ("
		"  (SELECT id FROM lhdiscord.member_snapshots WHERE complete AND trusted "
		"    ORDER BY taken_at DESC, id DESC LIMIT 1) "
		"  UNION ALL "
		"  (SELECT id FROM lhdiscord.member_snapshots WHERE complete "
		"    ORDER BY taken_at DESC, id DESC LIMIT 1) "
		"  UNION ALL "
		"  SELECT (payload->>'snapshot_id')::bigint FROM lhdiscord.outbox "
		"   WHERE kind = 'member_scan' AND state IN ('pending', 'in_flight') AND payload ? 'snapshot_id'), "
		"gone AS ("
		"  DELETE FROM lhdiscord.member_snapshots s "
		"   WHERE coalesce(s.finished_at, s.taken_at) < now() - make_interval(secs => $1) "
		"     AND s.id NOT IN (SELECT id FROM keep WHERE id IS NOT NULL) "
		"  RETURNING s.id) "
		"SELECT count(*), min(id), max(id) FROM gone",
		.nargs = 1,
		.argtypes = {INT4OID}
	};
	Datum		values[1];
	bool		isnull;
	int64		removed;

	if (retention_seconds <= 0)
		return 0;
	values[0] = Int32GetDatum(retention_seconds);
	lhd_exec(&prune_plan, values, NULL, false, 1);
	removed = DatumGetInt64(lhd_getattr(0, 1, &isnull));
	if (removed > 0)
	{
		LhdAudit	a = {0};

		a.action = "entitlement.snapshots_pruned";
		a.entity = "member_snapshots";
		a.after_json = psprintf("{\"snapshots_removed\": " INT64_FORMAT ", \"oldest_id\": %s, "
								"\"newest_id\": %s, \"retention_seconds\": %d}",
								removed, lhd_getattr_text(0, 2), lhd_getattr_text(0, 3),
								retention_seconds);
		a.description = psprintf(INT64_FORMAT " member snapshot(s) older than lhdiscord.snapshot_retention removed",
								 removed);
		lhd_audit(&a);
	}
	return removed;
}

/*
 * For the worker's housekeeping: prune with lhdiscord.snapshot_retention in
 * its own SPI connection; returns the snapshots removed.  Runs inside the
 * caller's transaction.
 */
int64
lhd_prune_snapshots(void)
{
	int64		removed;

	SPI_connect();
	removed = lhd_prune_snapshots_spi(lhd_snapshot_retention);
	SPI_finish();
	return removed;
}

/*
 * prune_snapshots(older_than interval DEFAULT NULL) -> bigint
 * Prunes on demand (default lhdiscord.snapshot_retention); the same
 * snapshots are always kept.  Superuser only unless granted.
 */
Datum
prune_snapshots(PG_FUNCTION_ARGS)
{
	int			seconds = lhd_snapshot_retention;
	int64		removed;

	if (!PG_ARGISNULL(0))
	{
		Interval   *iv = PG_GETARG_INTERVAL_P(0);
		float8		secs;

		secs = DatumGetFloat8(DirectFunctionCall2(interval_part,
												  CStringGetTextDatum("epoch"),
												  IntervalPGetDatum(iv)));
		if (secs < 1 || secs > INT_MAX)
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("older_than must be between 1 second and %d seconds", INT_MAX)));
		seconds = (int) secs;
	}
	SPI_connect();
	removed = lhd_prune_snapshots_spi(seconds);
	SPI_finish();
	PG_RETURN_INT64(removed);
}
