/*-------------------------------------------------------------------------
 *
 * jobs_oauth.c
 *	  Outbox jobs that use a member's OAuth tokens: guild join, token refresh.
 *
 * guild_join: PUT /guilds/{id}/members/{user} with the member's access
 * token (scope guilds.join); 201 (added) and 204 (already a member) both
 * succeed, and the member's role convergence is queued -- role jobs of a
 * Discord user wait while its join is pending, so roles land after the join.
 *
 * token_refresh: POST /oauth2/token with grant_type=refresh_token for an
 * account whose token expires within lhdiscord.token_refresh_margin (the
 * worker queues these); the new tokens are encrypted into the account and
 * committed synchronously.  A refresh the token endpoint rejects with
 * invalid_grant marks the account's tokens stale; the account stays linked.
 * Other failures (a rejected client secret, an outage) leave the tokens
 * alone and are tried again an hour later.
 *
 * Tokens are decrypted in the claim unit (never raising: a token that does
 * not decrypt just fails its job), sent as secret bodies (never recorded or
 * logged), and wiped when used.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "catalog/pg_type.h"
#include "utils/builtins.h"
#include "utils/guc.h"

#include "lhdiscord.h"
#include "lhd_engine.h"
#include "lhd_json.h"

typedef struct TokenJob
{
	int64		account_id;		/* 0 = the account is gone */
	char	   *token;			/* decrypted access or refresh token */
	/* refresh results */
	char	   *new_access;
	char	   *new_refresh;
	long		expires_in;
	bool		grant_rejected; /* 400 invalid_grant: the refresh token is dead */
} TokenJob;

/* Load the account and decrypt one token column ($1 = job ids). */
static void
token_fill(LhdTask *t, int r, const char *column)
{
	TokenJob   *st = palloc0(sizeof(TokenJob));
	bool		isnull;
	Datum		d;

	d = lhd_getattr(r, 2, &isnull);
	st->account_id = isnull ? 0 : DatumGetInt64(d);
	d = lhd_getattr(r, 3, &isnull);
	if (!isnull && st->account_id != 0)
		st->token = lhd_decrypt_token_soft(DatumGetByteaPP(d),
										   lhd_token_aad(column, t->discord_user_id));
	t->state = st;
}

static void
access_fill(LhdTask *t, int r)
{
	token_fill(t, r, "access_token");
}

static void
refresh_fill(LhdTask *t, int r)
{
	token_fill(t, r, "refresh_token");
}

#define TOKEN_JOB_SQL(column) \
	"SELECT o.id, a.id, a." column " FROM lhdiscord.outbox o " \
	"LEFT JOIN lhdiscord.discord_accounts a " \
	"       ON a.id = (o.payload->>'account_id')::bigint AND a.discord_user_id = o.discord_user_id " \
	"WHERE o.id = ANY ($1::bigint[])"

/* ---------- guild join ---------- */

void
lhd_join_prepare(LhdEngine *e, List *tasks)
{
	static LhdPlan plan = {
		.sql = TOKEN_JOB_SQL("access_token"),
		.nargs = 1,
		.argtypes = {INT8ARRAYOID},
		.options = LHD_PLAN_FRESH
	};

	lhd_tasks_load(tasks, &plan, access_fill);
}

/* Fails the task unless its account is still linked with a usable token. */
static bool
token_job_usable(LhdEngine *e, LhdTask *t, const char *token_name)
{
	TokenJob   *st = t->state;

	if (st == NULL || st->account_id == 0)
	{
		lhd_task_finish(e, t, LHD_OUT_FAILED, 0, "the Discord account is no longer linked");
		return false;
	}
	if (st->token == NULL)
	{
		lhd_task_finish(e, t, LHD_OUT_FAILED, 0,
						psprintf("no usable %s token (missing, or it does not decrypt)", token_name));
		return false;
	}
	return true;
}

void
lhd_join_start(LhdEngine *e, LhdTask *t)
{
	TokenJob   *st = t->state;
	LhdRequest *r;

	if (!token_job_usable(e, t, "access"))
		return;
	r = lhd_task_request(t, LHD_OP_MEMBER_ADD, "/guilds/%s/members/%s", e->guild_id, t->discord_user_id);
	lhd_request_set_body(r, lhd_json_join_body(st->token), "application/json", true);
	lhd_wipe(st->token);
	lhd_task_send(e, t, r);
}

void
lhd_join_response(LhdEngine *e, LhdTask *t, LhdRequest *r)
{
	if (r->body)
		lhd_wipe(r->body);
	/* 201 Created: added; 204 No Content: already a member. */
	if (lhd_response_ok(r))
		lhd_task_finish(e, t, LHD_OUT_DONE, r->status, NULL);
	else
		lhd_task_finish_from(e, t, r);
}

void
lhd_join_record(LhdEngine *e, List *tasks)
{
	ListCell   *lc;

	foreach(lc, tasks)
	{
		LhdTask    *t = lfirst(lc);

		if (t->outcome == LHD_OUT_DONE)
			lhd_enqueue_convergence(t->discord_user_id, t->user_id, "Joined the guild");
	}
}

/* ---------- token refresh ---------- */

void
lhd_refresh_prepare(LhdEngine *e, List *tasks)
{
	static LhdPlan plan = {
		.sql = TOKEN_JOB_SQL("refresh_token"),
		.nargs = 1,
		.argtypes = {INT8ARRAYOID},
		.options = LHD_PLAN_FRESH
	};

	lhd_tasks_load(tasks, &plan, refresh_fill);
}

void
lhd_refresh_start(LhdEngine *e, LhdTask *t)
{
	TokenJob   *st = t->state;
	LhdRequest *r;

	if (!token_job_usable(e, t, "refresh"))
		return;
	if (!lhd_oauth_client_configured())
	{
		lhd_task_finish(e, t, LHD_OUT_FAILED, 0, "lhdiscord.client_id and client_secret are not set");
		return;
	}
	r = lhd_task_request(t, LHD_OP_OAUTH_TOKEN, "/oauth2/token");
	lhd_request_set_body(r, lhd_oauth_token_form("refresh_token", "refresh_token", st->token),
						 "application/x-www-form-urlencoded", true);
	lhd_wipe(st->token);
	r->auth = LHD_AUTH_NONE;
	r->reason = NULL;
	lhd_task_send(e, t, r);
}

void
lhd_refresh_response(LhdEngine *e, LhdTask *t, LhdRequest *r)
{
	TokenJob   *st = t->state;
	LhdJsonToken tok;

	if (r->body)
		lhd_wipe(r->body);
	if (!lhd_response_ok(r))
	{
		/*
		 * Only invalid_grant (RFC 6749 5.2) says the account's refresh token
		 * is no good.  A rejected client (401 invalid_client: a wrong or
		 * rotated client secret) or an outage is not the account's fault.
		 */
		st->grant_rejected = (r->status == 400 && r->error != NULL &&
							  strcmp(r->error, "invalid_grant") == 0);
		lhd_task_finish_from(e, t, r);
		return;
	}
	if (!lhd_json_parse_token(r->resp_body, &tok))
	{
		lhd_wipe(r->resp_body);
		lhd_task_finish(e, t, LHD_OUT_FAILED, r->status, "malformed token response");
		return;
	}
	lhd_wipe(r->resp_body);
	st->new_access = MemoryContextStrdup(t->cxt, tok.access_token);
	st->new_refresh = tok.refresh_token ? MemoryContextStrdup(t->cxt, tok.refresh_token) : NULL;
	st->expires_in = tok.expires_in > 0 ? tok.expires_in : LHD_DEFAULT_TOKEN_TTL;
	lhd_wipe(tok.access_token);
	lhd_wipe(tok.refresh_token);
	lhd_task_finish(e, t, LHD_OUT_DONE, r->status, NULL);
}

void
lhd_refresh_record(LhdEngine *e, List *tasks)
{
	static LhdPlan store_plan = {
		.sql = "UPDATE lhdiscord.discord_accounts SET access_token = $2, "
		"       refresh_token = coalesce($3, refresh_token), "
		"       token_expires_at = now() + $4 * interval '1 second', "
		"       tokens_stale = false, tokens_refreshed_at = now() "
		"WHERE id = $1",
		.nargs = 4,
		.argtypes = {INT8OID, BYTEAOID, BYTEAOID, INT8OID}
	};
	static LhdPlan stale_plan = {
		.sql = "UPDATE lhdiscord.discord_accounts SET tokens_stale = true WHERE id = $1",
		.nargs = 1,
		.argtypes = {INT8OID}
	};
	ListCell   *lc;
	bool		durable = false;

	foreach(lc, tasks)
	{
		LhdTask    *t = lfirst(lc);
		TokenJob   *st = t->state;

		if (st == NULL || st->account_id == 0)
			continue;
		if (t->outcome == LHD_OUT_DONE && st->new_access)
		{
			Datum		values[4];
			char		nulls[4] = {' ', ' ', ' ', ' '};

			/*
			 * Discord has rotated the refresh token: losing this commit in a
			 * crash would leave only the dead one.  Commit synchronously,
			 * whatever the worker's session default.
			 */
			if (!durable)
			{
				set_config_option("synchronous_commit", "on", PGC_USERSET, PGC_S_OVERRIDE,
								  GUC_ACTION_LOCAL, true, 0, false);
				durable = true;
			}

			values[0] = Int64GetDatum(st->account_id);
			values[1] = PointerGetDatum(lhd_encrypt_token(st->new_access,
														  lhd_token_aad("access_token", t->discord_user_id)));
			if (st->new_refresh)
				values[2] = PointerGetDatum(lhd_encrypt_token(st->new_refresh,
															  lhd_token_aad("refresh_token", t->discord_user_id)));
			else
				nulls[2] = 'n';
			values[3] = Int64GetDatum(st->expires_in);
			lhd_wipe(st->new_access);
			lhd_wipe(st->new_refresh);
			lhd_exec(&store_plan, values, nulls, false, 0);
		}
		else if (t->outcome == LHD_OUT_FAILED && st->grant_rejected)
		{
			Datum		values[1] = {Int64GetDatum(st->account_id)};

			lhd_exec(&stale_plan, values, NULL, false, 0);
		}
	}
}

/*
 * Queue a refresh for every account whose token expires within the margin
 * (the worker's housekeeping calls this), unless one is under way or failed
 * within the hour (a rejected client secret must not turn into a refresh
 * storm).  Returns the number queued.
 */
int
lhd_queue_token_refreshes(void)
{
	static LhdPlan plan = {
		.sql = "INSERT INTO lhdiscord.outbox (kind, discord_user_id, user_id, payload, reason, lane) "
		"SELECT 'token_refresh', a.discord_user_id, a.user_id, jsonb_build_object('account_id', a.id), "
		"       'OAuth2 token refresh', 'bulk' "
		"FROM lhdiscord.discord_accounts a "
		"WHERE a.refresh_token IS NOT NULL AND NOT a.tokens_stale "
		"  AND a.token_expires_at < now() + $1 * interval '1 second' "
		"  AND NOT EXISTS (SELECT 1 FROM lhdiscord.outbox o "
		"                   WHERE o.kind = 'token_refresh' AND o.discord_user_id = a.discord_user_id "
		"                     AND (o.state IN ('pending', 'in_flight') "
		"                          OR (o.state IN ('failed', 'dead') "
		"                              AND o.finished_at > now() - interval '1 hour')))",
		.nargs = 1,
		.argtypes = {INT4OID}
	};
	Datum		values[1] = {Int32GetDatum(lhd_token_refresh_margin)};

	/* The fake API has no OAuth endpoint: refreshing there would only fail. */
	if (!lhd_oauth_client_configured() || lhd_api_mode == LHD_API_FAKE)
		return 0;
	return lhd_exec(&plan, values, NULL, false, 0);
}
