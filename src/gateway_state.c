/*-------------------------------------------------------------------------
 *
 * gateway_state.c
 *	  Live member state from the Gateway: what the Gateway worker writes.
 *
 * Owns the live member snapshot (source 'gateway'): seeding it from the
 * REQUEST_GUILD_MEMBERS chunks of a new session, completing it through the
 * same shrink guard as a scan, applying each GUILD_MEMBER_ADD, _UPDATE and
 * _REMOVE to it in order, and keeping its taken_at current while the
 * session is healthy.  taken_at of a live snapshot is the moment its state
 * was last known to be Discord's (the last event or heartbeat ACK); when the
 * session is down it stops moving, so entitlement fails closed after
 * lhdiscord.snapshot_max_age exactly as with a scan, and the access
 * context, status_map, has_access and reconcile read the live state as the
 * latest trusted snapshot without knowing where it came from.
 *
 * And what an event sets off: a change of the entitlement role (or a member
 * leaving or joining) reconciles the linked portal user at once, with the
 * event and its sequence number as evidence in the audit row; managed
 * roles changed on Discord by hand (in Portal-leading mode every mapped
 * role is managed) queue the member's convergence: the drift is repaired.
 *
 * Every function runs in the caller's transaction with SPI connected.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "catalog/pg_type.h"
#include "fmgr.h"
#include "utils/builtins.h"
#include "utils/jsonb.h"
#include "utils/timestamp.h"

#include "lhdiscord.h"
#include "lhd_access.h"
#include "lhd_engine.h"
#include "lhd_gateway.h"

int64
lhd_gw_seed_begin(void)
{
	return lhd_snapshot_new(GetCurrentTimestamp(), "gateway");
}

/* One GUILD_MEMBERS_CHUNK: its members array, as List Guild Members gives it. */
int
lhd_gw_seed_chunk(int64 snapshot_id, const char *members_json)
{
	Datum		members = DirectFunctionCall1(jsonb_in, CStringGetDatum(members_json));

	return lhd_snapshot_add_members(snapshot_id, members);
}

/* The listing is complete: the shrink guard decides whether it is trusted. */
bool
lhd_gw_seed_complete(int64 snapshot_id)
{
	bool		trusted = lhd_snapshot_complete(snapshot_id, "gateway");

	lhd_gw_touch(snapshot_id);
	return trusted;
}

/* The live state is Discord's as of now (a healthy session). */
void
lhd_gw_touch(int64 snapshot_id)
{
	static LhdPlan plan = {
		.sql = "UPDATE lhdiscord.member_snapshots SET taken_at = now() "
		"WHERE id = $1 AND source = 'gateway' AND complete",
		.nargs = 1,
		.argtypes = {INT8OID}
	};
	Datum		values[1] = {Int64GetDatum(snapshot_id)};

	lhd_exec(&plan, values, NULL, false, 0);
}

static bool
has_role(char **roles, int n, const char *role)
{
	if (role == NULL)
		return false;
	for (int i = 0; i < n; i++)
		if (strcmp(roles[i], role) == 0)
			return true;
	return false;
}

/* {"source": "gateway", "event": ..., "seq": ..., "discord_user_id": ...} */
static char *
evidence_json(const LhdGwEvent *ev)
{
	StringInfoData b;
	bool		first = true;

	initStringInfo(&b);
	appendStringInfoChar(&b, '{');
	lhd_json_append_str(&b, "source", "gateway", &first);
	lhd_json_append_str(&b, "event", ev->type, &first);
	lhd_json_append_raw(&b, "seq", psprintf("%lld", ev->seq), &first);
	lhd_json_append_str(&b, "discord_user_id", ev->user_id, &first);
	appendStringInfoChar(&b, '}');
	return b.data;
}

/*
 * The member's managed roles on Discord are not those the engine would give
 * it (a moderator changed one by hand): forget what lhdiscord last applied,
 * so that the convergence reads the member, and queue the convergence (it
 * folds into one queued or running).  Our own convergence's calls end at
 * the desired set, so they set off at most one extra pass, which reads the
 * member, finds nothing to change and sends nothing.
 */
static void
repair_drift(const LhdGwEvent *ev)
{
	static LhdPlan linked_plan = {
		.sql = "SELECT user_id FROM lhdiscord.discord_accounts WHERE discord_user_id = $1 "
		"ORDER BY status = 'active' DESC, id DESC LIMIT 1",
		.nargs = 1,
		.argtypes = {TEXTOID}
	};
	static LhdPlan forget_plan = {
		.sql = "DELETE FROM lhdiscord.role_state WHERE discord_user_id = $1",
		.nargs = 1,
		.argtypes = {TEXTOID}
	};
	Datum		values[1];
	bool		isnull;
	int64		user_id;
	char	   *id = ev->user_id;
	LhdRoleMap *map;
	LhdRoleInputs *in;
	LhdRoleSet	desired;
	LhdRoleSet	managed;
	LhdRoleSet	held = {0, NULL};
	bool		drifted;

	values[0] = CStringGetTextDatum(ev->user_id);
	if (lhd_exec(&linked_plan, values, NULL, true, 1) == 0)
		return;					/* not a linked account: not ours to converge */
	user_id = DatumGetInt64(lhd_getattr(0, 1, &isnull));
	map = lhd_rolemap_load();
	in = lhd_role_inputs_load(&id, 1);
	lhd_desired_roles(map, &in[0], &desired, &managed);
	for (int i = 0; i < ev->nroles; i++)
		if (lhd_roleset_contains(&managed, ev->roles[i]))
			lhd_roleset_add(&held, ev->roles[i]);
	drifted = held.n != desired.n;
	for (int i = 0; !drifted && i < held.n; i++)
		drifted = !lhd_roleset_contains(&desired, held.ids[i]);
	if (!drifted)
		return;
	lhd_exec(&forget_plan, values, NULL, false, 0);
	lhd_enqueue_convergence_in_lane(ev->user_id, user_id,
									"Managed roles changed on Discord by hand", "interactive");
}

/*
 * Apply one member event to the live snapshot and act on it for the
 * portal user it concerns.
 */
void
lhd_gw_apply_event(int64 snapshot_id, const LhdGwEvent *ev, const char *entitlement_role_id)
{
	static LhdPlan old_plan = {
		.sql = "SELECT role_ids FROM lhdiscord.snapshot_members "
		"WHERE snapshot_id = $1 AND discord_user_id = $2 FOR UPDATE",
		.nargs = 2,
		.argtypes = {INT8OID, TEXTOID}
	};
	static LhdPlan upsert_plan = {
		.sql = "INSERT INTO lhdiscord.snapshot_members (snapshot_id, discord_user_id, role_ids) "
		"VALUES ($1, $2, $3) "
		"ON CONFLICT (snapshot_id, discord_user_id) DO UPDATE SET role_ids = EXCLUDED.role_ids",
		.nargs = 3,
		.argtypes = {INT8OID, TEXTOID, TEXTARRAYOID}
	};
	static LhdPlan remove_plan = {
		.sql = "DELETE FROM lhdiscord.snapshot_members WHERE snapshot_id = $1 AND discord_user_id = $2",
		.nargs = 2,
		.argtypes = {INT8OID, TEXTOID}
	};
	static LhdPlan count_plan = {
		.sql = "UPDATE lhdiscord.member_snapshots SET member_count = member_count + $2, taken_at = now() "
		"WHERE id = $1",
		.nargs = 2,
		.argtypes = {INT8OID, INT4OID}
	};
	static LhdPlan users_plan = {
		.sql = "SELECT DISTINCT user_id FROM lhdiscord.discord_accounts WHERE discord_user_id = $1 "
		"ORDER BY user_id",
		.nargs = 1,
		.argtypes = {TEXTOID}
	};
	Datum		values[3];
	bool		isnull;
	bool		existed;
	bool		had = false;
	bool		has;
	int			delta = 0;

	if (ev->user_id == NULL || !lhd_is_snowflake(ev->user_id))
		return;
	values[0] = Int64GetDatum(snapshot_id);
	values[1] = CStringGetTextDatum(ev->user_id);
	existed = lhd_exec(&old_plan, values, NULL, false, 1) == 1;
	if (existed)
	{
		LhdRoleSet	old;

		lhd_roleset_from_array(&old, lhd_getattr(0, 1, &isnull), isnull);
		had = entitlement_role_id != NULL && lhd_roleset_contains(&old, entitlement_role_id);
	}
	if (ev->kind == LHD_GW_REMOVE)
	{
		if (existed)
		{
			lhd_exec(&remove_plan, values, NULL, false, 0);
			delta = -1;
		}
		has = false;
	}
	else
	{
		values[2] = lhd_text_array(ev->roles, ev->nroles);
		lhd_exec(&upsert_plan, values, NULL, false, 0);
		delta = existed ? 0 : 1;
		has = has_role(ev->roles, ev->nroles, entitlement_role_id);
	}
	values[1] = Int32GetDatum(delta);
	lhd_exec(&count_plan, values, NULL, false, 0);

	/* Discord-leading: entitlement is the role on Discord. */
	if (lhd_governance_mode == LHD_GOV_DISCORD_LEADING && had != has)
	{
		char	   *evidence = evidence_json(ev);
		int			n;
		int64	   *users;

		values[0] = CStringGetTextDatum(ev->user_id);
		n = lhd_exec(&users_plan, values, NULL, true, 0);
		users = palloc(sizeof(int64) * Max(n, 1));
		for (int i = 0; i < n; i++)
			users[i] = DatumGetInt64(lhd_getattr(i, 1, &isnull));
		for (int i = 0; i < n; i++)
			(void) lhd_reconcile_user_because(users[i], evidence);
	}
	if (ev->kind != LHD_GW_REMOVE)
		repair_drift(ev);
}
