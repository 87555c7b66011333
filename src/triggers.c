/*-------------------------------------------------------------------------
 *
 * triggers.c
 *	  Triggers that turn the application's plain SQL writes into Discord work.
 *
 * Owns:
 *	- users_after_update: membership level, staff department/rank and brig
 *	  changes (audited discord_roles_synced, discord_staff_synced or
 *	  discord_staff_removed, discord_user_brigged, discord_user_released);
 *	- accounts_after_change: every insert, delete (including cascades) and
 *	  status change of a Discord account queues that Discord user's
 *	  convergence, so no path can leave roles behind;
 *	- user_roles_after_change: portal role changes converge in portal-leading
 *	  mode;
 *	- role_map_after_change: a changed mapping converges the members it can affect;
 *	- touch_updated_at: maintains updated_at.
 *
 * All of them are row triggers with WHEN clauses or statement triggers whose
 * SQL runs through kept plans (spi_util.c), and all are SECURITY DEFINER so
 * the application needs privileges only on users and user_roles.
 *
 * A SECURITY DEFINER trigger function attached to some other table would
 * act with the extension's rights on rows its caller made up (a temp table
 * "updating" user 1 into the brig).  So no role but the owner may EXECUTE
 * them (nobody else can CREATE TRIGGER with them), and every trigger
 * function of the extension first checks, with lhd_trigger_require_table(),
 * that it fires for its own table in schema lhdiscord (42501 otherwise).
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/htup_details.h"
#include "catalog/pg_type.h"
#include "commands/trigger.h"
#include "fmgr.h"
#include "catalog/namespace.h"
#include "utils/builtins.h"
#include "utils/lsyscache.h"
#include "utils/rel.h"
#include "utils/timestamp.h"

#include "lhdiscord.h"
#include "lhd_access.h"

PG_FUNCTION_INFO_V1(users_after_update);
PG_FUNCTION_INFO_V1(accounts_after_change);
PG_FUNCTION_INFO_V1(user_roles_after_change);
PG_FUNCTION_INFO_V1(role_map_after_change);
PG_FUNCTION_INFO_V1(touch_updated_at);
PG_FUNCTION_INFO_V1(users_in_scope_changed);

/*
 * While a caller (link, unlink, revoke, brig) runs a statement on
 * discord_accounts, the reason its convergences carry, and how many the
 * trigger queued.  A caller that finds the trigger queued nothing is running
 * against an older extension version (the library is newer than the SQL
 * objects until ALTER EXTENSION UPDATE) and queues the work itself.
 */
static const char *pending_reason = NULL;
static const char *pending_lane = NULL;	/* a caller's explicit lane, or NULL */

/*
 * The lane the next account DML's convergence goes to (link_account with an
 * explicit lane); NULL for the default.  Cleared by lhd_exec_account_dml.
 */
void
lhd_set_pending_lane(const char *lane)
{
	pending_lane = lane;
}
static int	trigger_enqueues = 0;

/*
 * Run a statement on discord_accounts whose trigger queues convergences
 * with this reason; returns the rows processed, and in *queued (if not
 * NULL) whether the trigger queued anything.
 */
int
lhd_exec_account_dml(LhdPlan *plan, Datum *values, const char *nulls, long count,
					 const char *reason, bool *queued)
{
	int			n;

	pending_reason = reason;
	trigger_enqueues = 0;
	PG_TRY();
	{
		n = lhd_exec(plan, values, nulls, false, count);
	}
	PG_FINALLY();
	{
		pending_reason = NULL;
		pending_lane = NULL;
	}
	PG_END_TRY();
	if (queued)
		*queued = trigger_enqueues > 0;
	return n;
}

/*
 * Refuse (42501) to run a trigger function of the extension for any table
 * but its own: lhdiscord.<table>, or lhdiscord.<table2> when that is not
 * NULL.  Called first, before anything is read or written.
 */
void
lhd_trigger_require_table(FunctionCallInfo fcinfo, const char *fname,
						  const char *table, const char *table2)
{
	TriggerData *td;
	Relation	rel;
	Oid			ns;

	if (!CALLED_AS_TRIGGER(fcinfo))
		ereport(ERROR,
				(errcode(ERRCODE_E_R_I_E_TRIGGER_PROTOCOL_VIOLATED),
				 errmsg("function lhdiscord.%s() was not called by the trigger manager", fname)));
	td = (TriggerData *) fcinfo->context;
	rel = td->tg_relation;
	ns = get_namespace_oid("lhdiscord", true);
	if (OidIsValid(ns) && RelationGetNamespace(rel) == ns &&
		(strcmp(RelationGetRelationName(rel), table) == 0 ||
		 (table2 != NULL && strcmp(RelationGetRelationName(rel), table2) == 0)))
		return;
	ereport(ERROR,
			(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
			 errmsg("trigger function lhdiscord.%s() may only run for %s",
					fname,
					table2 ? psprintf("tables lhdiscord.%s and lhdiscord.%s", table, table2)
					: psprintf("table lhdiscord.%s", table)),
			 errdetail("It was fired by table %s.",
					   quote_qualified_identifier(get_namespace_name(RelationGetNamespace(rel)),
												  RelationGetRelationName(rel)))));
}

static char *
field_text(HeapTuple tuple, TupleDesc desc, const char *name)
{
	return SPI_getvalue(tuple, desc, SPI_fnumber(desc, name));
}

static bool
field_bool(HeapTuple tuple, TupleDesc desc, const char *name)
{
	bool		isnull;
	Datum		d = SPI_getbinval(tuple, desc, SPI_fnumber(desc, name), &isnull);

	return !isnull && DatumGetBool(d);
}

static int64
field_int64(HeapTuple tuple, TupleDesc desc, const char *name)
{
	bool		isnull;
	Datum		d = SPI_getbinval(tuple, desc, SPI_fnumber(desc, name), &isnull);

	return isnull ? 0 : DatumGetInt64(d);
}

static TimestampTz
field_timestamptz(HeapTuple tuple, TupleDesc desc, const char *name)
{
	bool		isnull;
	Datum		d = SPI_getbinval(tuple, desc, SPI_fnumber(desc, name), &isnull);

	return isnull ? 0 : DatumGetTimestampTz(d);
}

/* An account created this long before its insert was restored from a dump. */
#define RESTORED_AGE_USECS ((int64) 60 * USECS_PER_SEC)

static bool
text_differs(const char *a, const char *b)
{
	if (a == NULL || b == NULL)
		return a != b;
	return strcmp(a, b) != 0;
}

static void
audit_user_change(const char *action, int64 user_id, const char *before,
				  const char *after, const char *description)
{
	LhdAudit	a = {0};

	a.action = action;
	a.subject_user_id = user_id;
	a.entity = "users";
	a.entity_pk = psprintf(INT64_FORMAT, user_id);
	a.before_json = before;
	a.after_json = after;
	a.description = description;
	lhd_audit(&a);
}

/* Set the status of a user's accounts; their trigger queues the work. */
static int
set_account_status(int64 user_id, const char *from, const char *to, const char *reason)
{
	static LhdPlan plan = {
		.sql = "UPDATE lhdiscord.discord_accounts SET status = $3::lhdiscord.account_status "
		"WHERE user_id = $1 AND status = $2::lhdiscord.account_status",
		.nargs = 3,
		.argtypes = {INT8OID, TEXTOID, TEXTOID}
	};
	Datum		values[3];

	values[0] = Int64GetDatum(user_id);
	values[1] = CStringGetTextDatum(from);
	values[2] = CStringGetTextDatum(to);
	return lhd_exec_account_dml(&plan, values, NULL, 0, reason, NULL);
}

/*
 * AFTER UPDATE ON users FOR EACH ROW, WHEN level, department, rank or brig
 * changed.
 */
Datum
users_after_update(PG_FUNCTION_ARGS)
{
	TriggerData *td = (TriggerData *) fcinfo->context;
	TupleDesc	desc;
	HeapTuple	oldt;
	HeapTuple	newt;
	int64		user_id;
	char	   *old_level,
			   *new_level,
			   *old_dept,
			   *new_dept,
			   *old_rank,
			   *new_rank;
	bool		old_brig,
				new_brig;
	bool		level_changed,
				staff_changed;

	lhd_trigger_require_table(fcinfo, "users_after_update", "users", NULL);
	if (!TRIGGER_FIRED_BY_UPDATE(td->tg_event))
		elog(ERROR, "users_after_update: must fire AFTER UPDATE");
	desc = td->tg_relation->rd_att;
	oldt = td->tg_trigtuple;
	newt = td->tg_newtuple;

	user_id = field_int64(newt, desc, "user_id");
	old_level = field_text(oldt, desc, "membership_level");
	new_level = field_text(newt, desc, "membership_level");
	old_dept = field_text(oldt, desc, "staff_department");
	new_dept = field_text(newt, desc, "staff_department");
	old_rank = field_text(oldt, desc, "staff_rank");
	new_rank = field_text(newt, desc, "staff_rank");
	old_brig = field_bool(oldt, desc, "in_brig");
	new_brig = field_bool(newt, desc, "in_brig");
	level_changed = text_differs(old_level, new_level);
	staff_changed = text_differs(old_dept, new_dept) || text_differs(old_rank, new_rank);

	SPI_connect();

	if (!old_brig && new_brig)
	{
		/*
		 * The brig always completes in the database, whatever Discord does:
		 * accounts become brigged now, the strip is queued.
		 */
		int			n = set_account_status(user_id, "active", "brigged", "User placed in the brig");

		if (n > 0)
			audit_user_change("discord_user_brigged", user_id,
							  "{\"in_brig\": false}",
							  psprintf("{\"in_brig\": true, \"accounts_brigged\": %d}", n),
							  psprintf("%d Discord account(s) brigged; managed roles queued for removal", n));
	}
	else if (old_brig && !new_brig)
	{
		int			n = set_account_status(user_id, "brigged", "active", "User released from the brig");

		if (n > 0)
			audit_user_change("discord_user_released", user_id,
							  "{\"in_brig\": true}",
							  psprintf("{\"in_brig\": false, \"accounts_restored\": %d}", n),
							  psprintf("%d Discord account(s) restored; full permissions queued", n));
	}

	if ((level_changed || staff_changed) && !new_brig)
	{
		LhdAudit	audits[2] = {{0}};
		int			naudits = 0;

		if (level_changed)
		{
			StringInfoData before,
						after;
			bool		f1 = true,
						f2 = true;

			initStringInfo(&before);
			appendStringInfoChar(&before, '{');
			lhd_json_append_str(&before, "membership_level", old_level, &f1);
			appendStringInfoChar(&before, '}');
			initStringInfo(&after);
			appendStringInfoChar(&after, '{');
			lhd_json_append_str(&after, "membership_level", new_level, &f2);
			appendStringInfoChar(&after, '}');
			audits[naudits].action = "discord_roles_synced";
			audits[naudits].before_json = before.data;
			audits[naudits].after_json = after.data;
			audits[naudits++].description =
				psprintf("Membership %s -> %s synced to {n} Discord account(s)", old_level, new_level);
		}
		if (staff_changed)
		{
			StringInfoData before,
						after;
			bool		f1 = true,
						f2 = true;
			bool		removed = (new_dept == NULL && strcmp(new_rank, "none") == 0);

			initStringInfo(&before);
			appendStringInfoChar(&before, '{');
			lhd_json_append_str(&before, "staff_department", old_dept, &f1);
			lhd_json_append_str(&before, "staff_rank", old_rank, &f1);
			appendStringInfoChar(&before, '}');
			initStringInfo(&after);
			appendStringInfoChar(&after, '{');
			lhd_json_append_str(&after, "staff_department", new_dept, &f2);
			lhd_json_append_str(&after, "staff_rank", new_rank, &f2);
			appendStringInfoChar(&after, '}');
			audits[naudits].action = removed ? "discord_staff_removed" : "discord_staff_synced";
			audits[naudits].before_json = before.data;
			audits[naudits].after_json = after.data;
			audits[naudits++].description = removed ?
				"Staff roles removed from {n} Discord account(s)" :
				"Staff roles synced to {n} Discord account(s)";
		}

		/*
		 * Queue and audit in one statement (a released user's accounts were
		 * queued already; this folds into those jobs).  Rank-only changes
		 * re-sync department and rank together (edge case 8).
		 */
		lhd_enqueue_user_convergence(user_id,
									 level_changed ? "Membership level changed" : "Staff position changed",
									 naudits, audits);
	}

	SPI_finish();
	return PointerGetDatum(NULL);
}

/*
 * AFTER INSERT OR DELETE OR UPDATE OF status ON discord_accounts FOR EACH ROW:
 * queue the convergence of the Discord user (a deleted account converges to
 * nothing, i.e. every managed role it holds is stripped).
 */
Datum
accounts_after_change(PG_FUNCTION_ARGS)
{
	TriggerData *td = (TriggerData *) fcinfo->context;
	TupleDesc	desc;
	HeapTuple	tuple;
	const char *reason = pending_reason;

	lhd_trigger_require_table(fcinfo, "accounts_after_change", "discord_accounts", NULL);
	desc = td->tg_relation->rd_att;
	if (TRIGGER_FIRED_BY_UPDATE(td->tg_event))
	{
		if (!text_differs(field_text(td->tg_trigtuple, desc, "status"),
						  field_text(td->tg_newtuple, desc, "status")))
			return PointerGetDatum(NULL);
		tuple = td->tg_newtuple;
		if (reason == NULL)
			reason = "Discord account status changed";
	}
	else
	{
		tuple = td->tg_trigtuple;
		if (reason == NULL)
			reason = TRIGGER_FIRED_BY_INSERT(td->tg_event) ?
				"Discord account linked" : "Discord account removed";
	}

	SPI_connect();
	/*
	 * An account inserted with a creation time well before this transaction
	 * comes from a restore (pg_restore, COPY of a dump): bulk work, like the
	 * thousands of others restored with it.
	 */
	lhd_enqueue_convergence_in_lane(field_text(tuple, desc, "discord_user_id"),
									field_int64(tuple, desc, "user_id"), reason,
									pending_lane ? pending_lane :
									TRIGGER_FIRED_BY_INSERT(td->tg_event) &&
									field_timestamptz(tuple, desc, "created_at") <
									GetCurrentTransactionStartTimestamp() - RESTORED_AGE_USECS
									? "bulk" : "interactive");
	SPI_finish();
	trigger_enqueues++;
	return PointerGetDatum(NULL);
}

/*
 * AFTER INSERT OR UPDATE OR DELETE ON user_roles FOR EACH ROW: in
 * portal-leading mode a mapped portal role is a managed Discord role, so a
 * change converges the user's active accounts.
 */
Datum
user_roles_after_change(PG_FUNCTION_ARGS)
{
	TriggerData *td = (TriggerData *) fcinfo->context;
	TupleDesc	desc;
	HeapTuple	tuples[2];
	const char *changes[2];
	int			ntuples = 0;

	lhd_trigger_require_table(fcinfo, "user_roles_after_change", "user_roles", NULL);
	if (lhd_governance_mode != LHD_GOV_PORTAL_LEADING)
		return PointerGetDatum(NULL);

	desc = td->tg_relation->rd_att;
	if (TRIGGER_FIRED_BY_INSERT(td->tg_event))
	{
		tuples[ntuples] = td->tg_trigtuple;
		changes[ntuples++] = "granted";
	}
	else if (TRIGGER_FIRED_BY_DELETE(td->tg_event))
	{
		tuples[ntuples] = td->tg_trigtuple;
		changes[ntuples++] = "revoked";
	}
	else
	{
		/* Only a change of who holds which role is a revoke and a grant. */
		if (field_int64(td->tg_trigtuple, desc, "user_id") ==
			field_int64(td->tg_newtuple, desc, "user_id") &&
			!text_differs(field_text(td->tg_trigtuple, desc, "role"),
						  field_text(td->tg_newtuple, desc, "role")))
			return PointerGetDatum(NULL);
		tuples[ntuples] = td->tg_trigtuple;
		changes[ntuples++] = "revoked";
		tuples[ntuples] = td->tg_newtuple;
		changes[ntuples++] = "granted";
	}

	SPI_connect();
	for (int i = 0; i < ntuples; i++)
	{
		char	   *role = field_text(tuples[i], desc, "role");
		int64		user_id = field_int64(tuples[i], desc, "user_id");

		if (lhd_role_id_for_key(role) == NULL)
			continue;
		{
			StringInfoData after;
			bool		first = true;
			LhdAudit	a = {0};

			initStringInfo(&after);
			appendStringInfoChar(&after, '{');
			lhd_json_append_str(&after, "portal_role", role, &first);
			lhd_json_append_str(&after, "change", changes[i], &first);
			appendStringInfoChar(&after, '}');
			a.action = "discord_roles_synced";
			a.after_json = after.data;
			a.description = psprintf("Portal role %s %s; synced to {n} Discord account(s)", role, changes[i]);
			lhd_enqueue_user_convergence(user_id, psprintf("Portal role %s %s", role, changes[i]), 1, &a);
		}
	}
	SPI_finish();
	return PointerGetDatum(NULL);
}

/*
 * AFTER INSERT OR UPDATE OR DELETE ON role_map FOR EACH ROW: a mapping that
 * changed queues the convergence of the members it can affect (bulk lane);
 * a statement that changes no role id (an idempotent upsert, an UPDATE to
 * the same value) queues nothing.  See lhd_enqueue_role_key_change.
 */
Datum
role_map_after_change(PG_FUNCTION_ARGS)
{
	TriggerData *td = (TriggerData *) fcinfo->context;
	TupleDesc	desc;
	char	   *old_key = NULL,
			   *old_id = NULL,
			   *new_key = NULL,
			   *new_id = NULL;

	lhd_trigger_require_table(fcinfo, "role_map_after_change", "role_map", NULL);
	if (!TRIGGER_FIRED_FOR_ROW(td->tg_event))
	{
		/* The statement trigger of a schema before 0.6.0: converge everyone. */
		SPI_connect();
		lhd_enqueue_all_convergences("Role mapping changed");
		SPI_finish();
		return PointerGetDatum(NULL);
	}
	desc = td->tg_relation->rd_att;
	if (!TRIGGER_FIRED_BY_INSERT(td->tg_event))
	{
		old_key = field_text(td->tg_trigtuple, desc, "key");
		old_id = field_text(td->tg_trigtuple, desc, "discord_role_id");
	}
	if (!TRIGGER_FIRED_BY_DELETE(td->tg_event))
	{
		HeapTuple	nt = TRIGGER_FIRED_BY_UPDATE(td->tg_event) ? td->tg_newtuple : td->tg_trigtuple;

		new_key = field_text(nt, desc, "key");
		new_id = field_text(nt, desc, "discord_role_id");
	}
	/* An empty role id is an unset key: it maps nothing. */
	if (old_id && old_id[0] == '\0')
		old_id = NULL;
	if (new_id && new_id[0] == '\0')
		new_id = NULL;
	if (!text_differs(old_key, new_key) && !text_differs(old_id, new_id))
		return PointerGetDatum(NULL);

	/*
	 * A key that loses its role leaves that role alone (roles not in
	 * role_map are never touched): nothing to send.  A key mapped to a role
	 * converges the members whose desired set may hold it; a key moved from
	 * role O to role N also takes O off the members that hold it.
	 */
	if (new_key == NULL || new_id == NULL)
		return PointerGetDatum(NULL);
	SPI_connect();
	lhd_enqueue_role_key_change(new_key,
								old_id && !text_differs(old_key, new_key) ? old_id : NULL,
								"Role mapping changed");
	SPI_finish();
	return PointerGetDatum(NULL);
}

/*
 * AFTER UPDATE OF in_scope ON users FOR EACH ROW WHEN it changed: the
 * application's access-policy outcome moved, so reconcile this user now.
 */
Datum
users_in_scope_changed(PG_FUNCTION_ARGS)
{
	TriggerData *td = (TriggerData *) fcinfo->context;

	lhd_trigger_require_table(fcinfo, "users_in_scope_changed", "users", NULL);
	if (!TRIGGER_FIRED_BY_UPDATE(td->tg_event))
		elog(ERROR, "users_in_scope_changed: must fire AFTER UPDATE");
	lhd_reconcile_user_internal(field_int64(td->tg_newtuple, td->tg_relation->rd_att, "user_id"));
	return PointerGetDatum(NULL);
}

/* BEFORE UPDATE FOR EACH ROW: NEW.updated_at = now(). */
Datum
touch_updated_at(PG_FUNCTION_ARGS)
{
	TriggerData *td = (TriggerData *) fcinfo->context;
	Relation	rel;
	int			attnum;
	Datum		value;
	bool		isnull = false;

	lhd_trigger_require_table(fcinfo, "touch_updated_at", "users", "discord_accounts");
	if (!TRIGGER_FIRED_BY_UPDATE(td->tg_event))
		elog(ERROR, "touch_updated_at: must fire BEFORE UPDATE");
	rel = td->tg_relation;
	attnum = SPI_fnumber(rel->rd_att, "updated_at");
	if (attnum <= 0)
		return PointerGetDatum(td->tg_newtuple);
	value = TimestampTzGetDatum(GetCurrentTransactionStartTimestamp());
	return PointerGetDatum(heap_modify_tuple_by_cols(td->tg_newtuple, rel->rd_att,
													 1, &attnum, &value, &isnull));
}
