/*-------------------------------------------------------------------------
 *
 * fake.c
 *	  The fake Discord API (lhdiscord.api_mode = fake).
 *
 * Owns the transport used by pg_regress and local development: the same
 * engine, tasks and requests as live mode, but each request is answered
 * here, recorded in lhdiscord.fake_calls and logged with the
 * "[FakeDiscord]" prefix; no HTTP is sent.  Like Lighthouse's
 * FakeDiscordApiService it always succeeds.  It keeps a simulated guild in
 * lhdiscord.fake_members, so GET member and member listings answer what
 * earlier calls did, and tests can seed roles the engine must not touch.
 * Secrets in bodies (OAuth access tokens) are never recorded.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "catalog/pg_type.h"
#include "utils/builtins.h"

#include "lhdiscord.h"
#include "lhd_engine.h"
#include "lhd_json.h"
#include "lhd_shared.h"

static void
record_call(LhdRequest *r, int status)
{
	static LhdPlan plan = {
		.sql = "INSERT INTO lhdiscord.fake_calls (method, route, discord_user_id, role_id, body, status) "
		"VALUES ($1, $2, $3, $4, $5::jsonb, $6)",
		.nargs = 6,
		.argtypes = {TEXTOID, TEXTOID, TEXTOID, TEXTOID, TEXTOID, INT4OID}
	};
	Datum		values[6];
	char		nulls[6] = {' ', ' ', ' ', ' ', ' ', ' '};
	char	   *route = r->query ? psprintf("%s?%s", r->path, r->query) : r->path;

	values[0] = CStringGetTextDatum(lhd_method_names[r->method]);
	values[1] = CStringGetTextDatum(route);
	if (r->discord_user_id)
		values[2] = CStringGetTextDatum(r->discord_user_id);
	else
		nulls[2] = 'n';
	if (r->role_id)
		values[3] = CStringGetTextDatum(r->role_id);
	else
		nulls[3] = 'n';
	if (r->body && !r->body_secret && r->content_type &&
		strcmp(r->content_type, "application/json") == 0)
		values[4] = CStringGetTextDatum(r->body);
	else if (r->body)
		values[4] = CStringGetTextDatum("{\"redacted\": true}");
	else
		nulls[4] = 'n';
	values[5] = Int32GetDatum(status);
	lhd_exec(&plan, values, nulls, false, 0);
	ereport(LOG,
			(errmsg("[FakeDiscord] %s %s -> %d", lhd_method_names[r->method], route, status)));
}

static char *
fake_member_get(const char *user_id)
{
	static LhdPlan plan = {
		.sql = "INSERT INTO lhdiscord.fake_members (discord_user_id) VALUES ($1) "
		"ON CONFLICT (discord_user_id) DO UPDATE SET discord_user_id = EXCLUDED.discord_user_id "
		"RETURNING role_ids",
		.nargs = 1,
		.argtypes = {TEXTOID}
	};
	Datum		values[1] = {CStringGetTextDatum(user_id)};
	LhdRoleSet	roles;
	bool		isnull;
	Datum		d;

	lhd_exec(&plan, values, NULL, false, 1);
	d = lhd_getattr(0, 1, &isnull);
	lhd_roleset_from_array(&roles, d, isnull);
	return lhd_json_member_body(user_id, roles.ids, roles.n);
}

static void
fake_role_change(const char *user_id, const char *role_id, bool add)
{
	static LhdPlan add_plan = {
		.sql = "INSERT INTO lhdiscord.fake_members (discord_user_id, role_ids) VALUES ($1, ARRAY[$2]) "
		"ON CONFLICT (discord_user_id) DO UPDATE SET role_ids = "
		"  (SELECT array_agg(DISTINCT x ORDER BY x) FROM unnest(lhdiscord.fake_members.role_ids || $2) x)",
		.nargs = 2,
		.argtypes = {TEXTOID, TEXTOID}
	};
	static LhdPlan remove_plan = {
		.sql = "UPDATE lhdiscord.fake_members SET role_ids = array_remove(role_ids, $2) "
		"WHERE discord_user_id = $1",
		.nargs = 2,
		.argtypes = {TEXTOID, TEXTOID}
	};
	Datum		values[2] = {CStringGetTextDatum(user_id), CStringGetTextDatum(role_id)};

	lhd_exec(add ? &add_plan : &remove_plan, values, NULL, false, 0);
}

/* One page of the simulated guild, shaped like List Guild Members. */
static char *
fake_members_list(const char *query)
{
	static LhdPlan plan = {
		.sql = "SELECT coalesce(jsonb_agg(jsonb_build_object('user', jsonb_build_object('id', m.discord_user_id), "
		"                                          'roles', to_jsonb(m.role_ids)) ORDER BY m.discord_user_id::numeric), "
		"                '[]')::text "
		"FROM (SELECT * FROM lhdiscord.fake_members WHERE discord_user_id::numeric > $1::numeric "
		"      ORDER BY discord_user_id::numeric LIMIT $2) m",
		.nargs = 2,
		.argtypes = {TEXTOID, INT4OID}
	};
	const char *after = "0";
	int			limit = 1;
	const char *p;
	Datum		values[2];

	if ((p = strstr(query, "after=")) != NULL)
		after = pnstrdup(p + 6, strcspn(p + 6, "&"));
	if ((p = strstr(query, "limit=")) != NULL)
		limit = atoi(p + 6);
	values[0] = CStringGetTextDatum(after);
	values[1] = Int32GetDatum(limit);
	lhd_exec(&plan, values, NULL, true, 1);
	return lhd_getattr_text(0, 1);
}

/* Answer every ready request.  Runs inside a unit. */
void
lhd_fake_execute(LhdEngine *e)
{
	while (e->ready != NIL)
	{
		LhdRequest *r = linitial(e->ready);
		MemoryContext old;
		char	   *body = NULL;
		int			status = 200;

		e->ready = list_delete_first(e->ready);
		old = MemoryContextSwitchTo(r->task->cxt);
		switch (r->op)
		{
			case LHD_OP_MEMBER_GET:
				body = fake_member_get(r->discord_user_id);
				break;
			case LHD_OP_ROLE_PUT:
			case LHD_OP_ROLE_DELETE:
				fake_role_change(r->discord_user_id, r->role_id, r->op == LHD_OP_ROLE_PUT);
				status = 204;
				break;
			case LHD_OP_MEMBERS_LIST:
				body = fake_members_list(r->query ? r->query : "");
				break;
			case LHD_OP_MEMBER_ADD:
				body = fake_member_get(r->discord_user_id);
				status = 201;
				break;
			case LHD_OP_DM_CHANNEL:
				/* The fake DM channel id is the recipient's id. */
				body = psprintf("{\"id\": \"%s\", \"type\": 1}", r->discord_user_id);
				break;
			case LHD_OP_MESSAGE:
				body = psprintf("{\"id\": \"%s\", \"type\": 0}", r->discord_user_id);
				break;
			case LHD_OP_OAUTH_TOKEN:
			case LHD_OP_OAUTH_ME:
				status = 400;
				body = pstrdup("{\"error\": \"invalid_request\"}");
				break;
		}
		record_call(r, status);
		lhd_count_call();
		lhd_count_response(status);
		r->status = status;
		r->resp_body = body;
		MemoryContextSwitchTo(e->cxt);
		e->completed = lappend(e->completed, r);
		MemoryContextSwitchTo(old);
	}
}
