/*-------------------------------------------------------------------------
 *
 * roles.c
 *	  The desired-state role engine (Lighthouse spec sections 3 to 5 and 8).
 *
 * Owns the role_map (key validation, map_role()), the computation of the
 * managed role set and of an account's desired role set, the role-set
 * helpers, and the on-demand sync functions sync_roles, sync_staff and
 * sync_permissions.
 *
 * Desired set of an active account: the membership-level role, verified,
 * the department role and the rank role (unless none); in portal-leading
 * mode also every mapped portal role the user holds.  A brigged, unlinked or
 * revoked account gets nothing.  The managed set is every configured fixed
 * key (level, verified, staff_*, rank_*) plus, in portal-leading mode, the
 * mapped portal roles: in Discord-leading mode portal-role keys such as the
 * entitlement key are evidence read from Discord and are never written.
 * Roles outside the managed set are never touched.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "catalog/pg_type.h"
#include "fmgr.h"
#include "utils/array.h"
#include "utils/builtins.h"

#include "lhdiscord.h"
#include "lhd_engine.h"

PG_FUNCTION_INFO_V1(role_map_validate);
PG_FUNCTION_INFO_V1(map_role);
PG_FUNCTION_INFO_V1(desired_roles);
PG_FUNCTION_INFO_V1(sync_roles);
PG_FUNCTION_INFO_V1(sync_staff);
PG_FUNCTION_INFO_V1(sync_permissions);
PG_FUNCTION_INFO_V1(role_drift);

static const char *const fixed_keys[] = {
	"traveler", "resident", "citizen", "verified",
	"staff_command", "staff_chaplain", "staff_engineer", "staff_quartermaster", "staff_steward",
	"rank_jr_crew", "rank_crew_member", "rank_officer",
	NULL
};

static bool
is_fixed_key(const char *key)
{
	for (int i = 0; fixed_keys[i]; i++)
		if (strcmp(fixed_keys[i], key) == 0)
			return true;
	return false;
}

/*
 * A role_map key is one of the fixed keys, or a namespaced portal role such
 * as "hauling.member" (letters, digits, '_' or '-', with at least one '.').
 * Anything else, e.g. "staff_pilot" or "drifter", is a typo we reject.
 */
static bool
is_valid_key(const char *key)
{
	if (is_fixed_key(key))
		return true;
	if (!lhd_is_role_name(key) || strchr(key, '.') == NULL)
		return false;
	return key[0] != '.' && key[strlen(key) - 1] != '.';
}

static void
check_key_and_id(const char *key, const char *role_id)
{
	if (!is_valid_key(key))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("unknown role_map key: \"%s\"", key),
				 errhint("Keys are traveler, resident, citizen, verified, staff_<department>, "
						 "rank_jr_crew, rank_crew_member, rank_officer, or a namespaced portal role such as hauling.member.")));
	if (role_id != NULL && role_id[0] != '\0' && !lhd_is_snowflake(role_id))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_TEXT_REPRESENTATION),
				 errmsg("invalid Discord role id: \"%s\"", role_id),
				 errdetail("%s", LHD_SNOWFLAKE_RULE)));
}

/* Trigger: BEFORE INSERT OR UPDATE ON role_map FOR EACH ROW. */
Datum
role_map_validate(PG_FUNCTION_ARGS)
{
	TriggerData *trigdata = (TriggerData *) fcinfo->context;
	HeapTuple	tuple;
	TupleDesc	desc;
	char	   *key;
	char	   *role_id;

	lhd_trigger_require_table(fcinfo, "role_map_validate", "role_map", NULL);
	tuple = TRIGGER_FIRED_BY_UPDATE(trigdata->tg_event) ? trigdata->tg_newtuple : trigdata->tg_trigtuple;
	desc = trigdata->tg_relation->rd_att;
	key = SPI_getvalue(tuple, desc, SPI_fnumber(desc, "key"));
	role_id = SPI_getvalue(tuple, desc, SPI_fnumber(desc, "discord_role_id"));
	if (key == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("key must not be null")));
	check_key_and_id(key, role_id);
	return PointerGetDatum(tuple);
}

/*
 * map_role(key text, discord_role_id text) -> void
 * Sets (or, with NULL or '', unsets) the Discord role of a key.
 */
Datum
map_role(PG_FUNCTION_ARGS)
{
	static LhdPlan plan = {
		.sql = "INSERT INTO lhdiscord.role_map (key, discord_role_id) VALUES ($1, $2) "
		"ON CONFLICT (key) DO UPDATE SET discord_role_id = EXCLUDED.discord_role_id",
		.nargs = 2,
		.argtypes = {TEXTOID, TEXTOID}
	};
	char	   *key;
	char	   *role_id = "";
	Datum		values[2];

	lhd_require_not_null(PG_ARGISNULL(0), "key");
	key = text_to_cstring(PG_GETARG_TEXT_PP(0));
	if (!PG_ARGISNULL(1))
		role_id = text_to_cstring(PG_GETARG_TEXT_PP(1));
	check_key_and_id(key, role_id);

	SPI_connect();
	values[0] = CStringGetTextDatum(key);
	values[1] = CStringGetTextDatum(role_id);
	lhd_exec(&plan, values, NULL, false, 0);
	SPI_finish();
	PG_RETURN_VOID();
}

/* ---------- role sets ---------- */

static int
compare_ids(const void *a, const void *b)
{
	const char *x = *(const char *const *) a;
	const char *y = *(const char *const *) b;
	size_t		lx = strlen(x);
	size_t		ly = strlen(y);

	/* Snowflakes: numeric order is length order, then text order. */
	if (lx != ly)
		return lx < ly ? -1 : 1;
	return strcmp(x, y);
}

bool
lhd_roleset_contains(const LhdRoleSet *set, const char *id)
{
	return set->n > 0 &&
		bsearch(&id, set->ids, set->n, sizeof(char *), compare_ids) != NULL;
}

/* Insert keeping the set sorted and unique (sets are small). */
void
lhd_roleset_add(LhdRoleSet *set, const char *id)
{
	int			pos = 0;

	if (id == NULL || id[0] == '\0' || lhd_roleset_contains(set, id))
		return;
	if (set->ids == NULL)
		set->ids = palloc(sizeof(char *) * 16);
	else if ((set->n & 15) == 0)
		set->ids = repalloc(set->ids, sizeof(char *) * (set->n + 16));
	while (pos < set->n && compare_ids(&set->ids[pos], &id) < 0)
		pos++;
	memmove(&set->ids[pos + 1], &set->ids[pos], sizeof(char *) * (set->n - pos));
	set->ids[pos] = pstrdup(id);
	set->n++;
}

void
lhd_roleset_from_array(LhdRoleSet *set, Datum arr, bool isnull)
{
	Datum	   *elems;
	bool	   *nulls;
	int			n;

	set->n = 0;
	set->ids = NULL;
	if (isnull)
		return;
	deconstruct_array_builtin(DatumGetArrayTypeP(arr), TEXTOID, &elems, &nulls, &n);
	for (int i = 0; i < n; i++)
		if (!nulls[i])
			lhd_roleset_add(set, TextDatumGetCString(elems[i]));
}

/* The set as a text[] literal, e.g. {1,2}. */
char *
lhd_roleset_literal(const LhdRoleSet *set)
{
	StringInfoData buf;

	initStringInfo(&buf);
	appendStringInfoChar(&buf, '{');
	for (int i = 0; i < set->n; i++)
	{
		if (i > 0)
			appendStringInfoChar(&buf, ',');
		appendStringInfoString(&buf, set->ids[i]);
	}
	appendStringInfoChar(&buf, '}');
	return buf.data;
}

/* ---------- role map and the desired set ---------- */

LhdRoleMap *
lhd_rolemap_load(void)
{
	static LhdPlan plan = {
		.sql = "SELECT key, discord_role_id FROM lhdiscord.role_map "
		"WHERE discord_role_id IS NOT NULL AND discord_role_id <> '' ORDER BY key",
		.nargs = 0
	};
	LhdRoleMap *map = palloc0(sizeof(LhdRoleMap));
	int			n = lhd_exec(&plan, NULL, NULL, true, 0);

	map->n = n;
	map->keys = palloc(sizeof(char *) * (n + 1));
	map->ids = palloc(sizeof(char *) * (n + 1));
	for (int i = 0; i < n; i++)
	{
		map->keys[i] = lhd_getattr_text(i, 1);
		map->ids[i] = lhd_getattr_text(i, 2);
	}
	map->portal_leading = (lhd_governance_mode == LHD_GOV_PORTAL_LEADING);
	return map;
}

/* The Discord role mapped to a key, or NULL when the key is unmapped. */
char *
lhd_role_id_for_key(const char *key)
{
	static LhdPlan plan = {
		.sql = "SELECT discord_role_id FROM lhdiscord.role_map "
		"WHERE key = $1 AND discord_role_id IS NOT NULL AND discord_role_id <> ''",
		.nargs = 1,
		.argtypes = {TEXTOID}
	};
	Datum		values[1] = {CStringGetTextDatum(key)};

	if (lhd_exec(&plan, values, NULL, true, 1) == 0)
		return NULL;
	return lhd_getattr_text(0, 1);
}

static const char *
rolemap_get(const LhdRoleMap *map, const char *key)
{
	for (int i = 0; i < map->n; i++)
		if (strcmp(map->keys[i], key) == 0)
			return map->ids[i];
	return NULL;
}

/*
 * Compute the managed set (what the engine may add or remove) and the
 * desired set of one Discord user from its inputs.
 */
void
lhd_desired_roles(const LhdRoleMap *map, const LhdRoleInputs *in,
				  LhdRoleSet *desired, LhdRoleSet *managed)
{
	desired->n = 0;
	desired->ids = NULL;
	if (managed)
	{
		managed->n = 0;
		managed->ids = NULL;
		for (int i = 0; i < map->n; i++)
			if (is_fixed_key(map->keys[i]) || map->portal_leading)
				lhd_roleset_add(managed, map->ids[i]);
	}

	if (!in->account_exists || !in->account_active || in->in_brig)
		return;

	/* drifter and stowaway have no role (they cannot link anyway). */
	if (in->membership_level)
		lhd_roleset_add(desired, rolemap_get(map, in->membership_level));
	lhd_roleset_add(desired, rolemap_get(map, "verified"));
	if (in->staff_department)
	{
		char	   *key = psprintf("staff_%s", in->staff_department);

		lhd_roleset_add(desired, rolemap_get(map, key));
	}
	if (in->staff_rank && strcmp(in->staff_rank, "none") != 0)
	{
		char	   *key = psprintf("rank_%s", in->staff_rank);

		lhd_roleset_add(desired, rolemap_get(map, key));
	}
	if (map->portal_leading)
	{
		for (int i = 0; i < in->portal_roles.n; i++)
		{
			const char *role = in->portal_roles.ids[i];

			if (!is_fixed_key(role))
				lhd_roleset_add(desired, rolemap_get(map, role));
		}
	}
}

/*
 * desired_roles(discord_user_id text) -> text[]
 * The role ids the engine would converge this Discord user to right now.
 */
Datum
desired_roles(PG_FUNCTION_ARGS)
{
	MemoryContext callercxt = CurrentMemoryContext;
	char	   *id;
	LhdRoleMap *map;
	LhdRoleInputs *in;
	LhdRoleSet	desired;
	Datum		result;

	lhd_require_not_null(PG_ARGISNULL(0), "discord_user_id");
	id = lhd_require_snowflake(PG_GETARG_TEXT_PP(0), "Discord user id");

	SPI_connect();
	map = lhd_rolemap_load();
	in = lhd_role_inputs_load(&id, 1);
	lhd_desired_roles(map, &in[0], &desired, NULL);
	{
		MemoryContext old = MemoryContextSwitchTo(callercxt);

		result = lhd_text_array(desired.ids, desired.n);
		MemoryContextSwitchTo(old);
	}
	SPI_finish();
	PG_RETURN_DATUM(result);
}

/*
 * Load the convergence inputs of n Discord users in one query: account and
 * user state, portal roles and the last applied role state.
 */
LhdRoleInputs *
lhd_role_inputs_load(char **ids, int n)
{
	static LhdPlan plan = {
		.sql = "SELECT d.ord, a.id IS NOT NULL, a.status = 'active', coalesce(u.in_brig, false), "
		"       u.membership_level::text, u.staff_department::text, u.staff_rank::text, "
		"       (SELECT array_agg(r.role) FROM lhdiscord.user_roles r WHERE r.user_id = a.user_id), "
		"       s.role_ids "
		"FROM unnest($1::text[]) WITH ORDINALITY AS d(id, ord) "
		"LEFT JOIN lhdiscord.discord_accounts a ON a.discord_user_id = d.id "
		"LEFT JOIN lhdiscord.users u ON u.user_id = a.user_id "
		"LEFT JOIN lhdiscord.role_state s ON s.discord_user_id = d.id",
		.nargs = 1,
		.argtypes = {TEXTARRAYOID},
		.options = LHD_PLAN_FRESH
	};
	LhdRoleInputs *out = palloc0(sizeof(LhdRoleInputs) * n);
	Datum		values[1];
	int			rows;

	values[0] = lhd_text_array(ids, n);
	rows = lhd_exec(&plan, values, NULL, true, 0);
	for (int r = 0; r < rows; r++)
	{
		bool		isnull;
		int64		ord = DatumGetInt64(lhd_getattr(r, 1, &isnull));
		LhdRoleInputs *in = &out[ord - 1];
		Datum		d;

		in->account_exists = DatumGetBool(lhd_getattr(r, 2, &isnull));
		d = lhd_getattr(r, 3, &isnull);
		in->account_active = !isnull && DatumGetBool(d);
		in->in_brig = DatumGetBool(lhd_getattr(r, 4, &isnull));
		in->membership_level = lhd_getattr_text(r, 5);
		in->staff_department = lhd_getattr_text(r, 6);
		in->staff_rank = lhd_getattr_text(r, 7);
		d = lhd_getattr(r, 8, &isnull);
		lhd_roleset_from_array(&in->portal_roles, d, isnull);
		d = lhd_getattr(r, 9, &isnull);
		in->applied_known = !isnull;
		lhd_roleset_from_array(&in->applied, d, isnull);
	}
	return out;
}

/* ---------- sync_roles / sync_staff / sync_permissions ---------- */

typedef enum SyncWhat
{
	SYNC_ROLES = 1,
	SYNC_STAFF = 2
} SyncWhat;

static int
sync_user(FunctionCallInfo fcinfo, int what, const char *fname)
{
	static LhdPlan user_plan = {
		.sql = "SELECT membership_level::text, staff_department::text, staff_rank::text "
		"FROM lhdiscord.users WHERE user_id = $1",
		.nargs = 1,
		.argtypes = {INT8OID}
	};
	int64		user_id;
	Datum		values[1];
	int			queued;
	char	   *level;
	char	   *dept;
	char	   *rank;

	lhd_require_not_null(PG_ARGISNULL(0), "user_id");
	user_id = PG_GETARG_INT64(0);

	SPI_connect();
	values[0] = Int64GetDatum(user_id);
	if (lhd_exec(&user_plan, values, NULL, false, 1) == 0)
		lhd_raise_no_user(user_id);
	level = lhd_getattr_text(0, 1);
	dept = lhd_getattr_text(0, 2);
	rank = lhd_getattr_text(0, 3);

	/* Only active accounts are queued: brigged ones are skipped. */
	{
		LhdAudit	audits[2] = {{0}};
		int			naudits = 0;
		StringInfoData after;
		bool		first = true;

		if (what & SYNC_ROLES)
		{
			initStringInfo(&after);
			appendStringInfoChar(&after, '{');
			lhd_json_append_str(&after, "membership_level", level, &first);
			lhd_json_append_str(&after, "source", fname, &first);
			appendStringInfoChar(&after, '}');
			audits[naudits].action = "discord_roles_synced";
			audits[naudits].after_json = after.data;
			audits[naudits++].description = "Membership roles queued for {n} Discord account(s)";
		}
		if (what & SYNC_STAFF)
		{
			bool		removed = (dept == NULL && strcmp(rank, "none") == 0);

			first = true;
			initStringInfo(&after);
			appendStringInfoChar(&after, '{');
			lhd_json_append_str(&after, "staff_department", dept, &first);
			lhd_json_append_str(&after, "staff_rank", rank, &first);
			lhd_json_append_str(&after, "source", fname, &first);
			appendStringInfoChar(&after, '}');
			audits[naudits].action = removed ? "discord_staff_removed" : "discord_staff_synced";
			audits[naudits].after_json = after.data;
			audits[naudits++].description = "Staff roles queued for {n} Discord account(s)";
		}
		queued = lhd_enqueue_user_convergence(user_id, psprintf("%s requested", fname),
											  naudits, audits);
	}
	SPI_finish();
	return queued;
}

/* sync_roles(user_id) -> number of active accounts queued */
Datum
sync_roles(PG_FUNCTION_ARGS)
{
	PG_RETURN_INT32(sync_user(fcinfo, SYNC_ROLES, "sync_roles"));
}

/* sync_staff(user_id) -> number of active accounts queued */
Datum
sync_staff(PG_FUNCTION_ARGS)
{
	PG_RETURN_INT32(sync_user(fcinfo, SYNC_STAFF, "sync_staff"));
}

/* sync_permissions(user_id) -> number of active accounts queued */
Datum
sync_permissions(PG_FUNCTION_ARGS)
{
	PG_RETURN_INT32(sync_user(fcinfo, SYNC_ROLES | SYNC_STAFF, "sync_permissions"));
}

/* ---------- drift, for the status map ---------- */

/*
 * role_drift(account_status, in_brig, level, department, rank, portal_roles,
 *			  held) -> 'missing_role' | 'excess_role' | 'none'
 * Compares the managed roles a member holds in the snapshot (held; NULL
 * when the member is not in it) with its desired set.  The role map is
 * loaded once per query (cached in fn_extra).
 */
Datum
role_drift(PG_FUNCTION_ARGS)
{
	LhdRoleMap *map = fcinfo->flinfo->fn_extra;
	LhdRoleInputs in = {0};
	LhdRoleSet	desired;
	LhdRoleSet	managed;
	LhdRoleSet	held;

	if (map == NULL)
	{
		MemoryContext spicxt;

		SPI_connect();
		/* Loaded straight into fn_mcxt: it outlives SPI, for every row. */
		spicxt = MemoryContextSwitchTo(fcinfo->flinfo->fn_mcxt);
		map = lhd_rolemap_load();
		MemoryContextSwitchTo(spicxt);
		SPI_finish();
		fcinfo->flinfo->fn_extra = map;
	}

	in.account_exists = !PG_ARGISNULL(0);
	in.account_active = in.account_exists &&
		strcmp(text_to_cstring(PG_GETARG_TEXT_PP(0)), "active") == 0;
	in.in_brig = !PG_ARGISNULL(1) && PG_GETARG_BOOL(1);
	in.membership_level = PG_ARGISNULL(2) ? NULL : text_to_cstring(PG_GETARG_TEXT_PP(2));
	in.staff_department = PG_ARGISNULL(3) ? NULL : text_to_cstring(PG_GETARG_TEXT_PP(3));
	in.staff_rank = PG_ARGISNULL(4) ? NULL : text_to_cstring(PG_GETARG_TEXT_PP(4));
	lhd_roleset_from_array(&in.portal_roles, PG_ARGISNULL(5) ? (Datum) 0 : PG_GETARG_DATUM(5),
						   PG_ARGISNULL(5));
	lhd_roleset_from_array(&held, PG_ARGISNULL(6) ? (Datum) 0 : PG_GETARG_DATUM(6), PG_ARGISNULL(6));
	/* The held roles are Discord role ids: canonical snowflakes only. */
	for (int i = 0; i < held.n; i++)
		if (!lhd_is_snowflake(held.ids[i]))
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_TEXT_REPRESENTATION),
					 errmsg("invalid Discord role id: \"%s\"", held.ids[i]),
					 errdetail("%s", LHD_SNOWFLAKE_RULE)));
	lhd_desired_roles(map, &in, &desired, &managed);

	for (int i = 0; i < desired.n; i++)
		if (!lhd_roleset_contains(&held, desired.ids[i]))
			PG_RETURN_TEXT_P(cstring_to_text("missing_role"));
	for (int i = 0; i < held.n; i++)
		if (lhd_roleset_contains(&managed, held.ids[i]) &&
			!lhd_roleset_contains(&desired, held.ids[i]))
			PG_RETURN_TEXT_P(cstring_to_text("excess_role"));
	PG_RETURN_TEXT_P(cstring_to_text("none"));
}
