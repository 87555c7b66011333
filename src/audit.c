/*-------------------------------------------------------------------------
 *
 * audit.c
 *	  The append-only audit log.
 *
 * Owns lhd_audit() (the one writer every decision goes through), the guard
 * trigger that refuses UPDATE, DELETE and TRUNCATE on lhdiscord.audit_log
 * for every role including the owner and superusers, and the documented
 * retention function purge_audit_log(), which is the only path that may
 * remove rows, and the stamp trigger that records the database roles
 * (session_user and the caller's current_user) of every row.  The guard recognises the purge through a backend-local flag
 * that only C code can set, so no setting or role can switch it off.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/htup_details.h"
#include "catalog/pg_type.h"
#include "commands/trigger.h"
#include "fmgr.h"
#include "miscadmin.h"
#include "utils/builtins.h"
#include "utils/rel.h"
#include "utils/timestamp.h"

#include "lhdiscord.h"

PG_FUNCTION_INFO_V1(audit_log_guard);
PG_FUNCTION_INFO_V1(audit_log_stamp);
PG_FUNCTION_INFO_V1(purge_audit_log);

/* True only while purge_audit_log() runs its DELETE. */
static bool purge_in_progress = false;

/* Minimum age of rows that retention may remove. */
#define AUDIT_MIN_RETENTION_DAYS 30

static LhdPlan insert_plan = {
	.sql = "INSERT INTO lhdiscord.audit_log "
	"(action, actor_user_id, subject_user_id, entity, entity_pk, "
	" before_json, after_json, description) "
	"VALUES ($1, $2, $3, $4, $5, $6::jsonb, $7::jsonb, $8)",
	.nargs = 8,
	.argtypes = {TEXTOID, INT8OID, INT8OID, TEXTOID, TEXTOID, TEXTOID, TEXTOID, TEXTOID}
};

/* Write one audit row.  Caller must be connected to SPI. */
/*
 * The database role that acted: the caller's (SET ROLE) role, not the owner
 * a SECURITY DEFINER function runs as.
 */
char *
lhd_acting_role(void)
{
	return GetUserNameFromId(GetOuterUserId(), false);
}

void
lhd_audit(const LhdAudit *a)
{
	Datum		values[8];
	char		nulls[8];

	memset(nulls, ' ', sizeof(nulls));
	values[0] = CStringGetTextDatum(a->action);
	values[1] = Int64GetDatum(a->actor_user_id);
	nulls[1] = a->actor_user_id ? ' ' : 'n';
	values[2] = Int64GetDatum(a->subject_user_id);
	nulls[2] = a->subject_user_id ? ' ' : 'n';
#define OPT_TEXT(i, v) \
	do { if ((v) != NULL) values[i] = CStringGetTextDatum(v); else nulls[i] = 'n'; } while (0)
	OPT_TEXT(3, a->entity);
	OPT_TEXT(4, a->entity_pk);
	OPT_TEXT(5, a->before_json);
	OPT_TEXT(6, a->after_json);
	OPT_TEXT(7, a->description);
#undef OPT_TEXT
	lhd_exec(&insert_plan, values, nulls, false, 0);
}

/*
 * Trigger: BEFORE UPDATE OR DELETE (row) and BEFORE TRUNCATE (statement) on
 * lhdiscord.audit_log.  Enabled ALWAYS, so session_replication_role does not
 * bypass it either.
 */
Datum
audit_log_guard(PG_FUNCTION_ARGS)
{
	TriggerData *trigdata = (TriggerData *) fcinfo->context;
	const char *op;

	lhd_trigger_require_table(fcinfo, "audit_log_guard", "audit_log", NULL);

	if (TRIGGER_FIRED_BY_DELETE(trigdata->tg_event) && purge_in_progress)
		return PointerGetDatum(trigdata->tg_trigtuple);

	if (TRIGGER_FIRED_BY_UPDATE(trigdata->tg_event))
		op = "UPDATE";
	else if (TRIGGER_FIRED_BY_DELETE(trigdata->tg_event))
		op = "DELETE";
	else
		op = "TRUNCATE";

	ereport(ERROR,
			(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
			 errmsg("lhdiscord.audit_log is append-only"),
			 errdetail("%s is not allowed on the audit log for any role.", op),
			 errhint("Old rows can be removed only with lhdiscord.purge_audit_log().")));
	PG_RETURN_NULL();
}

/*
 * Trigger: BEFORE INSERT ON lhdiscord.audit_log FOR EACH ROW (enabled
 * ALWAYS).  Records the database roles behind the row beside the portal
 * actor: db_session_user (the login role, session_user) and db_current_user
 * (the role in effect for the caller's statement: its SET ROLE, not the
 * owner a SECURITY DEFINER function of the extension runs as).  No writer
 * of the extension supplies them, so they are always stamped here.  Values
 * an INSERT or COPY does supply are kept: that is how a restore brings back
 * the recorded roles, and only a role with INSERT on the audit log (its
 * owner, a superuser) can supply any.
 */
Datum
audit_log_stamp(PG_FUNCTION_ARGS)
{
	TriggerData *trigdata = (TriggerData *) fcinfo->context;
	HeapTuple	tuple;
	Relation	rel;
	int			attnums[2];
	Datum		values[2];
	bool		nulls[2] = {false, false};
	int			n = 0;
	NameData	session_name;
	NameData	current_name;
	bool		isnull;

	lhd_trigger_require_table(fcinfo, "audit_log_stamp", "audit_log", NULL);
	if (!TRIGGER_FIRED_BY_INSERT(trigdata->tg_event) || !TRIGGER_FIRED_FOR_ROW(trigdata->tg_event))
		elog(ERROR, "audit_log_stamp: must fire BEFORE INSERT FOR EACH ROW");
	rel = trigdata->tg_relation;
	tuple = trigdata->tg_trigtuple;

	attnums[n] = SPI_fnumber(rel->rd_att, "db_session_user");
	if (attnums[n] > 0 && (heap_getattr(tuple, attnums[n], rel->rd_att, &isnull), isnull))
	{
		namestrcpy(&session_name, GetUserNameFromId(GetSessionUserId(), false));
		values[n++] = NameGetDatum(&session_name);
	}
	attnums[n] = SPI_fnumber(rel->rd_att, "db_current_user");
	if (attnums[n] > 0 && (heap_getattr(tuple, attnums[n], rel->rd_att, &isnull), isnull))
	{
		namestrcpy(&current_name, lhd_acting_role());
		values[n++] = NameGetDatum(&current_name);
	}
	if (n == 0)
		return PointerGetDatum(tuple);
	return PointerGetDatum(heap_modify_tuple_by_cols(tuple, rel->rd_att, n, attnums, values, nulls));
}

/*
 * purge_audit_log(older_than interval) -> bigint
 *
 * The retention function: deletes rows created before now() - older_than,
 * refuses anything younger than AUDIT_MIN_RETENTION_DAYS, and records the
 * purge itself as an audit row.  Not granted to PUBLIC.
 */
Datum
purge_audit_log(PG_FUNCTION_ARGS)
{
	static LhdPlan delete_plan = {
		.sql = "DELETE FROM lhdiscord.audit_log WHERE created_at < now() - $1",
		.nargs = 1,
		.argtypes = {INTERVALOID}
	};
	Interval   *older_than;
	Interval	minimum;
	int64		removed;
	char	   *interval_text;
	StringInfoData after;
	LhdAudit	a = {0};

	lhd_require_not_null(PG_ARGISNULL(0), "older_than");
	older_than = PG_GETARG_INTERVAL_P(0);

	memset(&minimum, 0, sizeof(minimum));
	minimum.day = AUDIT_MIN_RETENTION_DAYS;
	if (DatumGetInt32(DirectFunctionCall2(interval_cmp,
										  IntervalPGetDatum(older_than),
										  IntervalPGetDatum(&minimum))) < 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("audit retention must keep at least %d days", AUDIT_MIN_RETENTION_DAYS),
				 errhint("Pass an interval of at least '%d days'.", AUDIT_MIN_RETENTION_DAYS)));

	interval_text = DatumGetCString(DirectFunctionCall1(interval_out,
														IntervalPGetDatum(older_than)));

	SPI_connect();
	purge_in_progress = true;
	PG_TRY();
	{
		Datum		values[1] = {IntervalPGetDatum(older_than)};

		removed = lhd_exec(&delete_plan, values, NULL, false, 0);
	}
	PG_FINALLY();
	{
		purge_in_progress = false;
	}
	PG_END_TRY();

	initStringInfo(&after);
	appendStringInfo(&after, "{\"rows_removed\": " INT64_FORMAT ", ", removed);
	{
		bool		first = true;

		lhd_json_append_str(&after, "older_than", interval_text, &first);
	}
	appendStringInfoChar(&after, '}');

	a.action = "audit_log_purged";
	a.entity = "audit_log";
	a.after_json = after.data;
	a.description = psprintf("Audit rows older than %s removed by %s",
							 interval_text, lhd_acting_role());
	lhd_audit(&a);
	SPI_finish();

	PG_RETURN_INT64(removed);
}
