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
 * repeated changes cannot leave wrong roles behind.  Because the queue is an
 * ordinary logged table written in the caller's transaction, a rollback
 * queues nothing and a crash loses nothing.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "catalog/pg_type.h"
#include "fmgr.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/timestamp.h"

#include "lhdiscord.h"

PG_FUNCTION_INFO_V1(prune_outbox);

/* Rows deleted per statement, so pruning never holds many locks. */
#define PRUNE_BATCH 10000

#define CONVERGENCE_UPSERT \
	"ON CONFLICT (discord_user_id) WHERE kind = 'roles' AND state IN ('pending', 'in_flight') " \
	"DO UPDATE SET generation = lhdiscord.outbox.generation + 1, " \
	"              user_id = EXCLUDED.user_id, reason = EXCLUDED.reason, updated_at = now()"

/* Queue (or fold into) the convergence of one Discord user's roles. */
void
lhd_enqueue_convergence(const char *discord_user_id, int64 user_id, const char *reason)
{
	static LhdPlan plan = {
		.sql = "INSERT INTO lhdiscord.outbox (kind, discord_user_id, user_id, reason) "
		"VALUES ('roles', $1, $2, $3) " CONVERGENCE_UPSERT,
		.nargs = 3,
		.argtypes = {TEXTOID, INT8OID, TEXTOID}
	};
	Datum		values[3];
	char		nulls[3] = {' ', ' ', ' '};

	values[0] = CStringGetTextDatum(discord_user_id);
	values[1] = Int64GetDatum(user_id);
	if (user_id == 0)
		nulls[1] = 'n';
	values[2] = CStringGetTextDatum(reason ? reason : "lhdiscord");
	lhd_exec(&plan, values, nulls, false, 0);
}

/*
 * Queue the convergence of every active Discord account of a portal user
 * and write its audit rows, in one statement (this is the trigger's hot
 * path).  The audit rows are written only when at least one account was
 * queued; their after_json gets "accounts": n and "{n}" in their
 * description becomes n.  Returns n.
 */
int
lhd_enqueue_user_convergence(int64 user_id, const char *reason, int naudits, const LhdAudit *audits)
{
	static LhdPlan plan = {
		.sql = "WITH q AS ("
		"  INSERT INTO lhdiscord.outbox (kind, discord_user_id, user_id, reason) "
		"  SELECT 'roles', a.discord_user_id, a.user_id, $2 "
		"    FROM lhdiscord.discord_accounts a WHERE a.user_id = $1 AND a.status = 'active' "
		"  " CONVERGENCE_UPSERT " RETURNING 1), "
		"n AS (SELECT count(*)::int AS n FROM q), "
		"w AS ("
		"  INSERT INTO lhdiscord.audit_log "
		"  (action, subject_user_id, entity, entity_pk, before_json, after_json, description) "
		"  SELECT x.action, $1, 'users', $1::text, x.before::jsonb, "
		"         jsonb_set(x.after::jsonb, '{accounts}', to_jsonb(n.n)), replace(x.descr, '{n}', n.n::text) "
		"    FROM n, unnest($3::text[], $4::text[], $5::text[], $6::text[]) AS x(action, before, after, descr) "
		"   WHERE n.n > 0 "
		"  RETURNING 1) "
		"SELECT n FROM n",
		.nargs = 6,
		.argtypes = {INT8OID, TEXTOID, TEXTARRAYOID, TEXTARRAYOID, TEXTARRAYOID, TEXTARRAYOID},
		/* Index lookups by key only: the generic plan is right, never replan. */
		.options = CURSOR_OPT_GENERIC_PLAN
	};
	Datum		values[6];
	Datum	   *actions = palloc(sizeof(Datum) * (naudits + 1));
	Datum	   *befores = palloc(sizeof(Datum) * (naudits + 1));
	bool	   *bnulls = palloc(sizeof(bool) * (naudits + 1));
	Datum	   *afters = palloc(sizeof(Datum) * (naudits + 1));
	Datum	   *descrs = palloc(sizeof(Datum) * (naudits + 1));
	int			dims[1] = {naudits};
	int			lbs[1] = {1};
	bool		isnull;

	for (int i = 0; i < naudits; i++)
	{
		actions[i] = CStringGetTextDatum(audits[i].action);
		bnulls[i] = (audits[i].before_json == NULL);
		befores[i] = bnulls[i] ? (Datum) 0 : CStringGetTextDatum(audits[i].before_json);
		afters[i] = CStringGetTextDatum(audits[i].after_json ? audits[i].after_json : "{}");
		descrs[i] = CStringGetTextDatum(audits[i].description ? audits[i].description : "");
	}
	values[0] = Int64GetDatum(user_id);
	values[1] = CStringGetTextDatum(reason ? reason : "lhdiscord");
	values[2] = PointerGetDatum(construct_array(actions, naudits, TEXTOID, -1, false, TYPALIGN_INT));
	values[3] = PointerGetDatum(construct_md_array(befores, bnulls, 1, dims, lbs,
												   TEXTOID, -1, false, TYPALIGN_INT));
	values[4] = PointerGetDatum(construct_array(afters, naudits, TEXTOID, -1, false, TYPALIGN_INT));
	values[5] = PointerGetDatum(construct_array(descrs, naudits, TEXTOID, -1, false, TYPALIGN_INT));
	lhd_exec(&plan, values, NULL, false, 1);
	return DatumGetInt32(lhd_getattr(0, 1, &isnull));
}

/*
 * Delete finished (done, failed, dead) jobs older than retention_seconds;
 * 0 keeps everything.  Returns the number deleted.
 */
int64
lhd_prune_outbox(int retention_seconds)
{
	static LhdPlan plan = {
		.sql = "DELETE FROM lhdiscord.outbox WHERE id IN ("
		"  SELECT id FROM lhdiscord.outbox "
		"   WHERE finished_at < now() - $1 * interval '1 second' LIMIT $2)",
		.nargs = 2,
		.argtypes = {INT4OID, INT4OID}
	};
	Datum		values[2] = {Int32GetDatum(retention_seconds), Int32GetDatum(PRUNE_BATCH)};
	int64		total = 0;
	int			n;

	if (retention_seconds <= 0)
		return 0;
	do
	{
		n = lhd_exec(&plan, values, NULL, false, 0);
		total += n;
	} while (n == PRUNE_BATCH);
	return total;
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
	SPI_connect();
	n = lhd_prune_outbox(seconds);
	SPI_finish();
	PG_RETURN_INT64(n);
}
