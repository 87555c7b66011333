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
#include "utils/builtins.h"
#include "utils/timestamp.h"

#include "lhdiscord.h"

PG_FUNCTION_INFO_V1(prune_outbox);

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

/* Queue (or fold into) the convergence of every active Discord account. */
void
lhd_enqueue_all_convergences(const char *reason)
{
	static LhdPlan plan = {
		.sql = "INSERT INTO lhdiscord.outbox (kind, discord_user_id, user_id, reason) "
		"SELECT 'roles', a.discord_user_id, a.user_id, $1 "
		"FROM lhdiscord.discord_accounts a WHERE a.status = 'active' " CONVERGENCE_UPSERT,
		.nargs = 1,
		.argtypes = {TEXTOID}
	};
	Datum		values[1] = {CStringGetTextDatum(reason)};

	lhd_exec(&plan, values, NULL, false, 0);
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
		.sql = "INSERT INTO lhdiscord.outbox (kind, discord_user_id, user_id, reason) "
		"SELECT 'roles', a.discord_user_id, a.user_id, $2 "
		"FROM lhdiscord.discord_accounts a "
		"WHERE a.user_id = $1 AND a.status = 'active' " CONVERGENCE_UPSERT,
		.nargs = 2,
		.argtypes = {INT8OID, TEXTOID}
	};
	Datum		values[2];
	int			n;

	values[0] = Int64GetDatum(user_id);
	values[1] = CStringGetTextDatum(reason ? reason : "lhdiscord");
	n = lhd_exec(&plan, values, NULL, false, 0);
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
