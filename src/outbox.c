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
#include "utils/builtins.h"

#include "lhdiscord.h"

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
 * Queue the convergence of every active Discord account of a portal user in
 * one set-based statement.  Returns the number of accounts queued.
 */
int
lhd_enqueue_user_convergence(int64 user_id, const char *reason)
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

	values[0] = Int64GetDatum(user_id);
	values[1] = CStringGetTextDatum(reason ? reason : "lhdiscord");
	return lhd_exec(&plan, values, NULL, false, 0);
}
