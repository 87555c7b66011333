/*-------------------------------------------------------------------------
 *
 * oauth.c
 *	  Discord OAuth2 linking entirely in SQL (Lighthouse spec section 2).
 *
 * Owns begin_oauth(user_id) and complete_oauth(user_id, code, state).
 *
 * begin_oauth checks the link gate (link_account's errors), stores a
 * single-use random state -- only its SHA-256, bound to the user, with an
 * expiry -- and returns the authorize URL (scopes identify and guilds.join).
 *
 * complete_oauth verifies the state without locking anything, exchanges the
 * code (POST /oauth2/token, form-encoded client credentials) and reads
 * GET /users/@me synchronously -- bounded by lhdiscord.request_timeout,
 * interruptible, holding no lock while it waits -- then consumes the state,
 * links through link_account (so the limit and duplicate errors are the
 * same) and queues the guild join.  Any OAuth failure raises
 * "Discord authorization failed." and, being an error, writes nothing.
 * The code, the tokens and the client secret never appear in an error, the
 * log or a query text: they travel as parameters and are wiped after use.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <ctype.h>

#include "access/htup_details.h"
#include "catalog/pg_type.h"
#include "fmgr.h"
#include "funcapi.h"
#include "utils/builtins.h"
#include "utils/timestamp.h"

#include "lhdiscord.h"
#include "lhd_engine.h"
#include "lhd_json.h"

PG_FUNCTION_INFO_V1(begin_oauth);
PG_FUNCTION_INFO_V1(complete_oauth);

#define MSG_OAUTH_FAILED "Discord authorization failed."
#define OAUTH_SCOPES "identify guilds.join"

static void
oauth_failed(const char *detail)
{
	ereport(ERROR,
			(errcode(ERRCODE_INVALID_AUTHORIZATION_SPECIFICATION),
			 errmsg(MSG_OAUTH_FAILED),
			 errdetail("%s", detail),
			 errhidestmt(true)));
}

/* Percent-encode everything but RFC 3986's unreserved characters. */
static void
append_encoded(StringInfo buf, const char *s)
{
	for (const unsigned char *p = (const unsigned char *) s; *p; p++)
	{
		if (isalnum(*p) || *p == '-' || *p == '.' || *p == '_' || *p == '~')
			appendStringInfoChar(buf, (char) *p);
		else
			appendStringInfo(buf, "%%%02X", *p);
	}
}

/*
 * Append name=value (percent-encoded) to a query string or a form body,
 * with '&' unless it is the first parameter.
 */
void
lhd_append_param(StringInfo buf, const char *name, const char *value)
{
	if (buf->len > 0 && buf->data[buf->len - 1] != '?')
		appendStringInfoChar(buf, '&');
	appendStringInfoString(buf, name);
	appendStringInfoChar(buf, '=');
	append_encoded(buf, value);
}

static bool
is_set(const char *setting)
{
	return setting != NULL && setting[0] != '\0';
}

/* Are the client id and secret the token endpoint needs set? */
bool
lhd_oauth_client_configured(void)
{
	return is_set(lhd_client_id) && is_set(lhd_client_secret);
}

/*
 * The form body of a token-endpoint request: grant_type, the grant's own
 * parameter, and the client credentials (a secret: wipe it after use).
 */
char *
lhd_oauth_token_form(const char *grant_type, const char *name, const char *value)
{
	StringInfoData form;

	initStringInfo(&form);
	lhd_append_param(&form, "grant_type", grant_type);
	lhd_append_param(&form, name, value);
	/* An authorization code is only valid with the redirect it was issued for. */
	if (strcmp(grant_type, "authorization_code") == 0)
		lhd_append_param(&form, "redirect_uri", lhd_redirect_uri);
	lhd_append_param(&form, "client_id", lhd_client_id);
	lhd_append_param(&form, "client_secret", lhd_client_secret);
	return form.data;
}

/*
 * scheme://host[:port] of lhdiscord.api_base_url: the authorize page lives
 * on the API's host (discord.com normally; the mock server in tests).
 */
static char *
authorize_origin(void)
{
	const char *url = lhd_api_base_url;
	const char *host = strstr(url, "://");
	size_t		len;

	host = host ? host + 3 : url;
	len = (host - url) + strcspn(host, "/?#");
	return pnstrdup(url, len);
}

static void
require_oauth_config(bool secret)
{
	if (!is_set(lhd_client_id) || !is_set(lhd_redirect_uri) ||
		(secret && !lhd_oauth_client_configured()))
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("Discord OAuth2 is not configured"),
				 errhint("Set lhdiscord.client_id, lhdiscord.client_secret and lhdiscord.redirect_uri.")));
}

/*
 * begin_oauth(user_id bigint) -> text
 * The URL to send the user to.
 */
Datum
begin_oauth(PG_FUNCTION_ARGS)
{
	static LhdPlan state_plan = {
		.sql = "INSERT INTO lhdiscord.oauth_states (state_hash, user_id, expires_at) "
		"VALUES ($1, $2, now() + $3 * interval '1 second')",
		.nargs = 3,
		.argtypes = {TEXTOID, INT8OID, INT4OID}
	};
	static LhdPlan prune_plan = {
		.sql = "DELETE FROM lhdiscord.oauth_states WHERE expires_at < now() - interval '1 day'",
		.nargs = 0
	};
	int64		user_id;
	char	   *state;
	Datum		values[3];
	StringInfoData url;

	lhd_require_not_null(PG_ARGISNULL(0), "user_id");
	user_id = PG_GETARG_INT64(0);

	/* In the caller's context: the URL is built after SPI_finish. */
	state = lhd_random_token(32);

	SPI_connect();
	/* The same gate and errors as link_account, before anything else. */
	lhd_require_can_link(user_id, NULL);
	require_oauth_config(false);

	values[0] = CStringGetTextDatum(lhd_sha256_hex(state, strlen(state)));
	values[1] = Int64GetDatum(user_id);
	values[2] = Int32GetDatum(lhd_oauth_state_ttl);
	lhd_exec(&state_plan, values, NULL, false, 0);
	lhd_exec(&prune_plan, NULL, NULL, false, 0);
	SPI_finish();

	initStringInfo(&url);
	appendStringInfo(&url, "%s/oauth2/authorize?", authorize_origin());
	lhd_append_param(&url, "response_type", "code");
	lhd_append_param(&url, "client_id", lhd_client_id);
	lhd_append_param(&url, "redirect_uri", lhd_redirect_uri);
	lhd_append_param(&url, "scope", OAUTH_SCOPES);
	lhd_append_param(&url, "state", state);
	PG_RETURN_TEXT_P(cstring_to_text(url.data));
}

/* One synchronous OAuth request; fails the whole flow unless 2xx. */
static LhdRequest *
oauth_call(LhdOp op, LhdMethod method, const char *path, char *body, char *bearer,
		   const char *what)
{
	LhdRequest *r = palloc0(sizeof(LhdRequest));

	r->op = op;
	r->method = method;
	r->path = (char *) path;
	r->route = (char *) path;
	r->body = body;
	r->body_secret = true;
	r->content_type = "application/x-www-form-urlencoded";
	r->auth = bearer ? LHD_AUTH_BEARER : LHD_AUTH_NONE;
	r->bearer = bearer;
	lhd_http_sync(r);
	if (body)
		lhd_wipe(body);
	if (r->status == 0)
		oauth_failed(psprintf("Discord could not be reached (%s): %s", what,
							  r->error ? r->error : "no response"));
	if (r->status < 200 || r->status >= 300)
	{
		lhd_wipe(r->resp_body);
		oauth_failed(psprintf("Discord refused the %s (HTTP %ld%s%s).", what, r->status,
							  r->error ? ", " : "", r->error ? r->error : ""));
	}
	return r;
}

/*
 * complete_oauth(user_id bigint, code text, state text) -> discord_accounts
 */
static Datum complete_oauth_body(PG_FUNCTION_ARGS);

/*
 * The statement that called complete_oauth() holds the code and the state:
 * no error it raises may write that statement to the server log.
 */
Datum
complete_oauth(PG_FUNCTION_ARGS)
{
	return lhd_call_hiding_statement(complete_oauth_body, fcinfo);
}

static Datum
complete_oauth_body(PG_FUNCTION_ARGS)
{
	static LhdPlan check_plan = {
		.sql = "SELECT user_id, used_at IS NOT NULL, expires_at <= now() "
		"FROM lhdiscord.oauth_states WHERE state_hash = $1",
		.nargs = 1,
		.argtypes = {TEXTOID}
	};
	static LhdPlan consume_plan = {
		.sql = "UPDATE lhdiscord.oauth_states SET used_at = now() "
		"WHERE state_hash = $1 AND user_id = $2 AND used_at IS NULL AND expires_at > now()",
		.nargs = 2,
		.argtypes = {TEXTOID, INT8OID}
	};
	static LhdPlan link_plan = {
		.sql = "SELECT * FROM lhdiscord.link_account($1, $2, $3, $4, $5, $6, $7, "
		"                                      now() + $8 * interval '1 second')",
		.nargs = 8,
		.argtypes = {INT8OID, TEXTOID, TEXTOID, TEXTOID, TEXTOID, TEXTOID, TEXTOID, INT8OID}
	};
	static LhdPlan join_plan = {
		.sql = "INSERT INTO lhdiscord.outbox (kind, discord_user_id, user_id, payload, reason) "
		"VALUES ('guild_join', $1, $2, jsonb_build_object('account_id', $3), "
		"        'Discord account linked with OAuth2')",
		.nargs = 3,
		.argtypes = {TEXTOID, INT8OID, INT8OID}
	};
	MemoryContext callercxt = CurrentMemoryContext;
	TupleDesc	resultdesc;
	int64		user_id;
	char	   *code;
	char	   *state;
	char	   *state_hash;
	Datum		values[8];
	char		nulls[8];
	bool		isnull;
	char	   *form;
	LhdRequest *r;
	LhdJsonToken token;
	LhdJsonUser me;
	HeapTuple	result;
	int64		account_id;

	if (get_call_result_type(fcinfo, NULL, &resultdesc) != TYPEFUNC_COMPOSITE)
		elog(ERROR, "complete_oauth: return type must be a row type");
	resultdesc = BlessTupleDesc(resultdesc);
	lhd_require_not_null(PG_ARGISNULL(0), "user_id");
	user_id = PG_GETARG_INT64(0);
	if (PG_ARGISNULL(1) || PG_ARGISNULL(2))
		oauth_failed("The authorization code or state is missing.");
	code = text_to_cstring(PG_GETARG_TEXT_PP(1));
	state = text_to_cstring(PG_GETARG_TEXT_PP(2));
	if (code[0] == '\0' || state[0] == '\0' || strlen(code) > 512 || strlen(state) > 512)
		oauth_failed("The authorization code or state is missing or malformed.");
	if (lhd_api_mode == LHD_API_FAKE)
		oauth_failed("OAuth2 needs lhdiscord.api_mode = live.");
	/* The client secret is checked after the state: neither needs HTTP. */
	require_oauth_config(false);

	SPI_connect();

	/* 1. The state: issued to this user, unused, unexpired.  No lock taken. */
	state_hash = lhd_sha256_hex(state, strlen(state));
	lhd_wipe(state);
	values[0] = CStringGetTextDatum(state_hash);
	if (lhd_exec(&check_plan, values, NULL, false, 1) == 0)
		oauth_failed("The state is unknown.");
	if (DatumGetInt64(lhd_getattr(0, 1, &isnull)) != user_id)
		oauth_failed("The state was issued to another user.");
	if (DatumGetBool(lhd_getattr(0, 2, &isnull)))
		oauth_failed("The state was already used.");
	if (DatumGetBool(lhd_getattr(0, 3, &isnull)))
		oauth_failed("The state expired.");

	require_oauth_config(true);

	/* 2. Exchange the code for tokens. */
	form = lhd_oauth_token_form("authorization_code", "code", code);
	lhd_wipe(code);
	r = oauth_call(LHD_OP_OAUTH_TOKEN, LHD_POST, "/oauth2/token", form, NULL,
				   "authorization code");
	if (!lhd_json_parse_token(r->resp_body, &token))
	{
		lhd_wipe(r->resp_body);
		oauth_failed("Discord's token response could not be read.");
	}
	lhd_wipe(r->resp_body);

	/* 3. Who authorized? */
	r = oauth_call(LHD_OP_OAUTH_ME, LHD_GET, "/users/@me", NULL, token.access_token,
				   "user lookup");
	if (!lhd_json_parse_user(r->resp_body, &me) || !lhd_is_snowflake(me.id))
		oauth_failed("Discord's user response could not be read.");

	/* 4. Consume the state (exactly once, even against a concurrent call). */
	values[0] = CStringGetTextDatum(state_hash);
	values[1] = Int64GetDatum(user_id);
	if (lhd_exec(&consume_plan, values, NULL, false, 0) == 0)
		oauth_failed("The state was already used.");

	/* 5. Link, with link_account's checks and errors. */
	memset(nulls, ' ', sizeof(nulls));
	values[0] = Int64GetDatum(user_id);
	values[1] = CStringGetTextDatum(me.id);
	values[2] = CStringGetTextDatum(me.username);
	if (me.global_name)
		values[3] = CStringGetTextDatum(me.global_name);
	else
		nulls[3] = 'n';
	if (me.avatar)
		values[4] = CStringGetTextDatum(me.avatar);
	else
		nulls[4] = 'n';
	values[5] = CStringGetTextDatum(token.access_token);
	if (token.refresh_token)
		values[6] = CStringGetTextDatum(token.refresh_token);
	else
		nulls[6] = 'n';
	values[7] = Int64GetDatum(token.expires_in > 0 ? token.expires_in : LHD_DEFAULT_TOKEN_TTL);
	lhd_wipe(token.access_token);
	lhd_wipe(token.refresh_token);
	lhd_exec(&link_plan, values, nulls, false, 1);
	account_id = DatumGetInt64(lhd_getattr(0, 1, &isnull));
	result = lhd_account_tuple(resultdesc, 0, callercxt);

	/* 6. Put the member in the guild; its roles follow the join. */
	values[0] = CStringGetTextDatum(me.id);
	values[1] = Int64GetDatum(user_id);
	values[2] = Int64GetDatum(account_id);
	lhd_exec(&join_plan, values, NULL, false, 0);

	SPI_finish();
	PG_RETURN_DATUM(HeapTupleGetDatum(result));
}
