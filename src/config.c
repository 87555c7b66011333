/*-------------------------------------------------------------------------
 *
 * config.c
 *	  The lhdiscord.* configuration parameters (GUCs) and their validation.
 *
 * Owns every setting of SPEC section 4.  Secrets (bot token, client secret,
 * encryption key) are GUC_SUPERUSER_ONLY | GUC_NO_SHOW_ALL, and their check
 * hooks replace PostgreSQL's default "invalid value ... \"<value>\"" message
 * so that a rejected secret is never echoed into an error or the log.
 *
 * A secret's GUC variable never holds the secret: the check hook moves the
 * value into the setting's "extra" and leaves an empty string behind, and
 * the assign hook points lhd_bot_token & co. at the extra.  The postmaster
 * logs "parameter X changed to <value>" on a reload whenever the variable's
 * text changes; as the text is always empty, a secret set or rotated in
 * postgresql.conf is never written to the server log.  SHOW (superusers
 * only) prints "********" for a secret that is set.
 *
 * Policy settings are PGC_SUSET so that a superuser can override them for a
 * transaction or a test; the worker re-reads everything on SIGHUP.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <ctype.h>
#include <limits.h>

#include "miscadmin.h"
#include "utils/guc.h"

#include "lhdiscord.h"

char	   *lhd_database = NULL;
char	   *lhd_api_base_url = NULL;
int			lhd_api_mode = LHD_API_LIVE;
char	   *lhd_bot_token = "";
char	   *lhd_guild_id = NULL;
char	   *lhd_client_id = NULL;
char	   *lhd_client_secret = "";
char	   *lhd_redirect_uri = NULL;
char	   *lhd_encryption_key = "";
int			lhd_max_discord_accounts = 1;
int			lhd_governance_mode = LHD_GOV_DISCORD_LEADING;
char	   *lhd_entitlement_key = NULL;
int			lhd_snapshot_max_age = 21600;
char	   *lhd_privileged_roles = NULL;
int			lhd_reconcile_interval = 600;
int			lhd_reconcile_max_suspend_percent = 20;
int			lhd_snapshot_max_shrink_percent = 50;
int			lhd_max_concurrency = 16;
int			lhd_request_timeout_ms = 10000;
int			lhd_global_rate_limit = 50;
int			lhd_invalid_request_budget = 2000;
int			lhd_poll_interval = 60;
int			lhd_outbox_retention = 7 * 24 * 3600;
int			lhd_snapshot_retention = 7 * 24 * 3600;
int			lhd_oauth_state_ttl = 600;
int			lhd_token_refresh_margin = 86400;
int			lhd_max_attempts = 10;
int			lhd_retry_base_ms = 1000;
int			lhd_worker_lock_timeout = 5000;
int			lhd_worker_statement_timeout = 60000;
int			lhd_rate_limit_max_wait = 3600;
int			lhd_job_max_age = 86400;
int			lhd_retry_max_delay = 300;
bool		lhd_gateway_enabled = false;

static const struct config_enum_entry api_mode_options[] = {
	{"live", LHD_API_LIVE, false},
	{"fake", LHD_API_FAKE, false},
	{NULL, 0, false}
};

static const struct config_enum_entry governance_mode_options[] = {
	{"discord_leading", LHD_GOV_DISCORD_LEADING, false},
	{"portal_leading", LHD_GOV_PORTAL_LEADING, false},
	{NULL, 0, false}
};

#define SECRET_FLAGS (GUC_SUPERUSER_ONLY | GUC_NO_SHOW_ALL)

/* The GUC variables of the secrets: always "" (see the file header). */
static char *bot_token_guc = NULL;
static char *client_secret_guc = NULL;
static char *encryption_key_guc = NULL;

/*
 * The API base URL must be https, or plain http to a loopback host (the
 * project's mock server, a local proxy).  Anything else would send the bot
 * token in the clear.
 */
static bool
check_api_base_url(char **newval, void **extra, GucSource source)
{
	const char *url = *newval;
	const char *host;
	size_t		hostlen;

	if (url == NULL || url[0] == '\0')
	{
		GUC_check_errdetail("The Discord API base URL must not be empty.");
		return false;
	}
	if (pg_strncasecmp(url, "https://", 8) == 0)
		host = url + 8;
	else if (pg_strncasecmp(url, "http://", 7) == 0)
		host = url + 7;
	else
	{
		GUC_check_errdetail("The URL must start with https:// (or http:// for a loopback host).");
		return false;
	}

	if (host[0] == '[')
	{
		const char *end = strchr(host, ']');

		if (end == NULL)
		{
			GUC_check_errdetail("The URL has an unterminated IPv6 address.");
			return false;
		}
		host++;
		hostlen = end - host;
	}
	else
		hostlen = strcspn(host, ":/?#");

	if (hostlen == 0)
	{
		GUC_check_errdetail("The URL has no host.");
		return false;
	}
	/* "http://127.0.0.1:x@evil.example/" is a login at evil.example. */
	if (memchr(host, '@', strcspn(host, "/?#")) != NULL)
	{
		GUC_check_errdetail("The URL must not contain user information (user:password@).");
		return false;
	}
	if (lhd_has_control_chars(url, true))
	{
		GUC_check_errdetail("The URL must not contain spaces or control characters.");
		return false;
	}
	if (pg_strncasecmp(url, "http://", 7) == 0 &&
		!lhd_is_loopback_host(host, hostlen))
	{
		GUC_check_errdetail("Plain http is allowed only to a loopback host; use https.");
		return false;
	}
	/* Normalise: no trailing slash, so paths can be appended directly. */
	{
		size_t		len = strlen(url);

		if (len > 0 && url[len - 1] == '/')
		{
			/* A string GUC value belongs to guc.c's allocator. */
			char	   *copy = lhd_guc_malloc(len);

			if (copy == NULL)
				return false;
			memcpy(copy, url, len - 1);
			copy[len - 1] = '\0';
			lhd_guc_free(*newval);
			*newval = copy;
		}
	}
	return true;
}

/* An optional snowflake: empty, or 17 to 20 digits. */
static bool
check_optional_snowflake(char **newval, void **extra, GucSource source)
{
	if (*newval == NULL || (*newval)[0] == '\0')
		return true;
	if (!lhd_is_snowflake(*newval))
	{
		GUC_check_errdetail("%s", LHD_SNOWFLAKE_RULE);
		return false;
	}
	return true;
}

static bool
check_redirect_uri(char **newval, void **extra, GucSource source)
{
	const char *v = *newval;

	if (v == NULL || v[0] == '\0')
		return true;
	if (pg_strncasecmp(v, "https://", 8) != 0 && pg_strncasecmp(v, "http://", 7) != 0)
	{
		GUC_check_errdetail("The redirect URI must be an http:// or https:// URL.");
		return false;
	}
	if (lhd_has_control_chars(v, true))
	{
		GUC_check_errdetail("The redirect URI must not contain spaces or control characters.");
		return false;
	}
	return true;
}

/*
 * Move an accepted secret out of the GUC variable into the setting's extra
 * (both allocated with guc.c's allocator, which frees extras and string
 * values: malloc up to PostgreSQL 15, GUCMemoryContext from 16; see
 * lhd_compat.h).
 */
static bool
stash_secret(char **newval, void **extra)
{
	char	   *value = lhd_guc_strdup(*newval ? *newval : "");
	char	   *empty = lhd_guc_strdup("");

	if (value == NULL || empty == NULL)
	{
		lhd_guc_free(value);
		lhd_guc_free(empty);
		GUC_check_errcode(ERRCODE_OUT_OF_MEMORY);
		GUC_check_errmsg("out of memory");
		return false;
	}
	lhd_guc_free(*newval);
	*newval = empty;
	*extra = value;
	return true;
}

/*
 * Per secret: the assign hook points the C variable at the value kept in the
 * extra, and the show hook prints a mask instead of the (empty) GUC text.
 */
#define SECRET_HOOKS(name, var) \
static void \
assign_##name(const char *newval, void *extra) \
{ \
	(var) = extra ? (char *) extra : ""; \
} \
static const char * \
show_##name(void) \
{ \
	return (var)[0] != '\0' ? "********" : ""; \
}
SECRET_HOOKS(bot_token, lhd_bot_token)
SECRET_HOOKS(client_secret, lhd_client_secret)
SECRET_HOOKS(encryption_key, lhd_encryption_key)

/*
 * Secrets are taken only from the server's configuration: postgresql.conf
 * and ALTER SYSTEM (PGC_S_FILE), the command line (PGC_S_ARGV) and the
 * defaults.  Everything else is refused, with an error naming the allowed
 * ways: ALTER ROLE/DATABASE ... SET and CREATE FUNCTION ... SET are
 * validated with PGC_S_TEST, so they fail at ALTER time and the value never
 * reaches pg_db_role_setting (readable by every role); a value already
 * stored there (put there while the library was not loaded) arrives as
 * PGC_S_DATABASE/USER/DATABASE_USER and is refused again, so it never takes
 * effect; connection options (PGC_S_CLIENT) and SET (PGC_S_SESSION) are
 * refused too.  A session may only clear a secret (SET ... = ''), which
 * reveals nothing and affects only itself.
 */
static bool
secret_source_allowed(const char *v, GucSource source)
{
	switch (source)
	{
		case PGC_S_DEFAULT:
		case PGC_S_DYNAMIC_DEFAULT:
		case PGC_S_ENV_VAR:
		case PGC_S_FILE:
		case PGC_S_ARGV:
		case PGC_S_GLOBAL:
		case PGC_S_OVERRIDE:
			return true;
		case PGC_S_SESSION:
			if (v == NULL || v[0] == '\0')
				return true;
			break;
		default:
			break;
	}
	GUC_check_errcode(ERRCODE_INSUFFICIENT_PRIVILEGE);
	GUC_check_errmsg("secret lhdiscord parameters can only be set in the server configuration");
	GUC_check_errdetail("Set it in postgresql.conf, with ALTER SYSTEM, or on the server command line; "
						"it cannot be set per database, per role, per function, per connection or per session.");
	return false;
}

/*
 * Secrets travel in HTTP headers and form bodies: refuse control characters
 * (header injection) without ever echoing the value.
 */
static bool
check_secret(char **newval, void **extra, GucSource source)
{
	const char *v = *newval;

	if (!secret_source_allowed(v, source))
		return false;
	if (v == NULL)
		return stash_secret(newval, extra);
	if (lhd_has_control_chars(v, false))
	{
		GUC_check_errmsg("invalid value for a secret lhdiscord parameter");
		GUC_check_errdetail("The value must not contain control characters.");
		return false;
	}
	if (strlen(v) > LHD_TOKEN_MAX)
	{
		GUC_check_errmsg("invalid value for a secret lhdiscord parameter");
		GUC_check_errdetail("The value is longer than %d bytes.", LHD_TOKEN_MAX);
		return false;
	}
	return stash_secret(newval, extra);
}

static bool
check_encryption_key(char **newval, void **extra, GucSource source)
{
	const char *v = *newval;
	int			n = 0;

	if (!secret_source_allowed(v, source))
		return false;
	if (v == NULL || v[0] == '\0')
		return stash_secret(newval, extra);
	for (const char *p = v; *p; p++, n++)
	{
		if (!isxdigit((unsigned char) *p))
			break;
	}
	if (n != 64 || v[n] != '\0')
	{
		GUC_check_errmsg("invalid value for parameter \"lhdiscord.encryption_key\"");
		GUC_check_errdetail("The key must be exactly 64 hexadecimal digits (256 bits).");
		return false;
	}
	return stash_secret(newval, extra);
}

static bool
check_entitlement_key(char **newval, void **extra, GucSource source)
{
	if (*newval == NULL || !lhd_is_role_name(*newval))
	{
		GUC_check_errdetail("The entitlement key must be a portal role name: 1 to %d letters, digits, '.', '_', ':' or '-'.",
							LHD_ROLE_NAME_MAX);
		return false;
	}
	return true;
}

/* A comma-separated list of portal role names; empty means "none". */
static bool
check_privileged_roles(char **newval, void **extra, GucSource source)
{
	char	  **roles;
	int			n;

	if (*newval == NULL || (*newval)[0] == '\0')
		return true;
	n = lhd_split_list(*newval, &roles);
	for (int i = 0; i < n; i++)
	{
		if (!lhd_is_role_name(roles[i]))
		{
			GUC_check_errdetail("\"%s\" is not a valid portal role name.", roles[i]);
			return false;
		}
	}
	return true;
}

void
lhd_define_gucs(void)
{
	/*
	 * Only the postmaster may create a PGC_POSTMASTER variable: loaded any
	 * other way (no worker then), the setting is merely informational.
	 */
	DefineCustomStringVariable("lhdiscord.database",
							   "Database the lhdiscord background worker connects to.",
							   NULL,
							   &lhd_database,
							   "postgres",
							   process_shared_preload_libraries_in_progress ? PGC_POSTMASTER : PGC_SIGHUP,
							   0,
							   NULL, NULL, NULL);

	DefineCustomStringVariable("lhdiscord.api_base_url",
							   "Base URL of the Discord REST API (v10).",
							   "Must be https, except for a loopback host.",
							   &lhd_api_base_url,
							   "https://discord.com/api/v10",
							   PGC_SUSET,
							   0,
							   check_api_base_url, NULL, NULL);

	DefineCustomEnumVariable("lhdiscord.api_mode",
							 "live sends HTTP to Discord; fake records the calls in lhdiscord.fake_calls.",
							 NULL,
							 &lhd_api_mode,
							 LHD_API_LIVE,
							 api_mode_options,
							 PGC_SUSET,
							 0,
							 NULL, NULL, NULL);

	DefineCustomStringVariable("lhdiscord.bot_token",
							   "Discord bot token (secret).",
							   NULL,
							   &bot_token_guc,
							   "",
							   PGC_SUSET,
							   SECRET_FLAGS,
							   check_secret, assign_bot_token, show_bot_token);

	DefineCustomStringVariable("lhdiscord.guild_id",
							   "Discord guild (server) whose roles lhdiscord manages.",
							   NULL,
							   &lhd_guild_id,
							   "",
							   PGC_SUSET,
							   0,
							   check_optional_snowflake, NULL, NULL);

	DefineCustomStringVariable("lhdiscord.client_id",
							   "Discord OAuth2 application client id.",
							   NULL,
							   &lhd_client_id,
							   "",
							   PGC_SUSET,
							   0,
							   check_optional_snowflake, NULL, NULL);

	DefineCustomStringVariable("lhdiscord.client_secret",
							   "Discord OAuth2 application client secret (secret).",
							   NULL,
							   &client_secret_guc,
							   "",
							   PGC_SUSET,
							   SECRET_FLAGS,
							   check_secret, assign_client_secret, show_client_secret);

	DefineCustomStringVariable("lhdiscord.redirect_uri",
							   "OAuth2 redirect URI registered with Discord.",
							   NULL,
							   &lhd_redirect_uri,
							   "",
							   PGC_SUSET,
							   0,
							   check_redirect_uri, NULL, NULL);

	DefineCustomStringVariable("lhdiscord.encryption_key",
							   "AES-256-GCM key for OAuth tokens at rest: 64 hex digits (secret).",
							   NULL,
							   &encryption_key_guc,
							   "",
							   PGC_SUSET,
							   SECRET_FLAGS,
							   check_encryption_key, assign_encryption_key, show_encryption_key);

	DefineCustomIntVariable("lhdiscord.max_discord_accounts",
							"Maximum number of Discord accounts one portal user may link.",
							NULL,
							&lhd_max_discord_accounts,
							1, 1, 100,
							PGC_SUSET,
							0,
							NULL, NULL, NULL);

	DefineCustomEnumVariable("lhdiscord.governance_mode",
							 "discord_leading: Discord roles decide entitlement; portal_leading: portal roles do.",
							 NULL,
							 &lhd_governance_mode,
							 LHD_GOV_DISCORD_LEADING,
							 governance_mode_options,
							 PGC_SUSET,
							 0,
							 NULL, NULL, NULL);

	DefineCustomStringVariable("lhdiscord.entitlement_key",
							   "Portal role (and role_map key) that grants entitlement.",
							   NULL,
							   &lhd_entitlement_key,
							   "hauling.member",
							   PGC_SUSET,
							   0,
							   check_entitlement_key, NULL, NULL);

	DefineCustomIntVariable("lhdiscord.snapshot_max_age",
							"Age after which a member snapshot no longer counts as evidence (fail closed).",
							NULL,
							&lhd_snapshot_max_age,
							21600, 1, INT_MAX,
							PGC_SUSET,
							GUC_UNIT_S,
							NULL, NULL, NULL);

	DefineCustomStringVariable("lhdiscord.privileged_roles",
							   "Comma-separated portal roles that are never suspended.",
							   NULL,
							   &lhd_privileged_roles,
							   "admin,subadmin",
							   PGC_SUSET,
							   GUC_LIST_INPUT,
							   check_privileged_roles, NULL, NULL);

	DefineCustomIntVariable("lhdiscord.reconcile_interval",
							"Seconds between scheduled reconcile runs of the worker (0 turns them off).",
							NULL,
							&lhd_reconcile_interval,
							600, 0, INT_MAX,
							PGC_SUSET,
							GUC_UNIT_S,
							NULL, NULL, NULL);

	DefineCustomIntVariable("lhdiscord.reconcile_max_suspend_percent",
							"A reconcile that would suspend more than this percentage of active users aborts.",
							NULL,
							&lhd_reconcile_max_suspend_percent,
							20, 0, 100,
							PGC_SUSET,
							0,
							NULL, NULL, NULL);

	DefineCustomIntVariable("lhdiscord.snapshot_max_shrink_percent",
							"A snapshot that shrinks more than this percentage is not trusted until accepted.",
							NULL,
							&lhd_snapshot_max_shrink_percent,
							50, 0, 100,
							PGC_SUSET,
							0,
							NULL, NULL, NULL);

	DefineCustomIntVariable("lhdiscord.max_concurrency",
							"Discord requests in flight at once (connections are reused).",
							NULL,
							&lhd_max_concurrency,
							16, 1, 256,
							PGC_SUSET,
							0,
							NULL, NULL, NULL);

	DefineCustomIntVariable("lhdiscord.request_timeout",
							"Timeout of one Discord request.",
							NULL,
							&lhd_request_timeout_ms,
							10000, 100, 600000,
							PGC_SUSET,
							GUC_UNIT_MS,
							NULL, NULL, NULL);

	DefineCustomIntVariable("lhdiscord.global_rate_limit",
							"Requests per second across all routes (Discord's global limit is 50; 0 = no limit).",
							NULL,
							&lhd_global_rate_limit,
							50, 0, 100000,
							PGC_SUSET,
							0,
							NULL, NULL, NULL);

	DefineCustomIntVariable("lhdiscord.invalid_request_budget",
							"401, 403 and 429 responses allowed per 10 minutes before sending stops; from half of it the worker slows to 1 request/s (Discord bans at 10000).",
							NULL,
							&lhd_invalid_request_budget,
							2000, 10, 9000,
							PGC_SUSET,
							0,
							NULL, NULL, NULL);

	DefineCustomIntVariable("lhdiscord.poll_interval",
							"Safety-net poll of the worker; commits wake it at once.",
							NULL,
							&lhd_poll_interval,
							60, 1, 3600,
							PGC_SUSET,
							GUC_UNIT_S,
							NULL, NULL, NULL);

	DefineCustomIntVariable("lhdiscord.outbox_retention",
							"Finished (done, failed, dead) outbox jobs older than this are pruned (0 = keep).",
							NULL,
							&lhd_outbox_retention,
							7 * 24 * 3600, 0, INT_MAX,
							PGC_SUSET,
							GUC_UNIT_S,
							NULL, NULL, NULL);

	DefineCustomIntVariable("lhdiscord.snapshot_retention",
							"Member snapshots stored longer ago than this are pruned (0 = keep); the latest trusted, the latest complete and a scan's own snapshot are always kept.",
							NULL,
							&lhd_snapshot_retention,
							7 * 24 * 3600, 0, INT_MAX,
							PGC_SUSET,
							GUC_UNIT_S,
							NULL, NULL, NULL);

	DefineCustomIntVariable("lhdiscord.oauth_state_ttl",
							"Lifetime of the single-use state begin_oauth() issues.",
							NULL,
							&lhd_oauth_state_ttl,
							600, 30, 86400,
							PGC_SUSET,
							GUC_UNIT_S,
							NULL, NULL, NULL);

	DefineCustomIntVariable("lhdiscord.token_refresh_margin",
							"OAuth tokens expiring within this time are refreshed by the worker.",
							NULL,
							&lhd_token_refresh_margin,
							86400, 60, 30 * 86400,
							PGC_SUSET,
							GUC_UNIT_S,
							NULL, NULL, NULL);

	DefineCustomIntVariable("lhdiscord.max_attempts",
							"Attempts of a member scan or token refresh on transient failures (5xx, timeouts) before it is dead; both are queued again on schedule.",
							NULL,
							&lhd_max_attempts,
							10, 1, 1000,
							PGC_SUSET,
							0,
							NULL, NULL, NULL);

	DefineCustomIntVariable("lhdiscord.retry_base_delay",
							"First retry delay; it doubles per attempt, with jitter.",
							NULL,
							&lhd_retry_base_ms,
							1000, 1, 3600000,
							PGC_SUSET,
							GUC_UNIT_MS,
							NULL, NULL, NULL);

	DefineCustomIntVariable("lhdiscord.retry_max_delay",
							"Upper bound of the retry delay.",
							NULL,
							&lhd_retry_max_delay,
							300, 1, 86400,
							PGC_SUSET,
							GUC_UNIT_S,
							NULL, NULL, NULL);

	DefineCustomIntVariable("lhdiscord.worker_lock_timeout",
							"lock_timeout of the worker's transactions: a job whose rows are locked longer is retried later.",
							NULL,
							&lhd_worker_lock_timeout,
							5000, 10, 600000,
							PGC_SUSET,
							GUC_UNIT_MS,
							NULL, NULL, NULL);

	DefineCustomIntVariable("lhdiscord.worker_statement_timeout",
							"statement_timeout of the worker's transactions (claims, outcomes, reconcile, housekeeping).",
							NULL,
							&lhd_worker_statement_timeout,
							60000, 100, 3600000,
							PGC_SUSET,
							GUC_UNIT_MS,
							NULL, NULL, NULL);

	DefineCustomIntVariable("lhdiscord.rate_limit_max_wait",
							"Upper bound of a wait that Discord asks for (429 retry_after, X-RateLimit-Reset-After).",
							NULL,
							&lhd_rate_limit_max_wait,
							3600, 1, 86400,
							PGC_SUSET,
							GUC_UNIT_S,
							NULL, NULL, NULL);

	DefineCustomIntVariable("lhdiscord.job_max_age",
							"DMs and guild joins still failing this long after they were queued end dead; role convergences never do.",
							NULL,
							&lhd_job_max_age,
							86400, 60, 30 * 86400,
							PGC_SUSET,
							GUC_UNIT_S,
							NULL, NULL, NULL);

	DefineCustomBoolVariable("lhdiscord.gateway",
							 "Keep a Discord Gateway session (a second background worker) and act on member events at once.",
							 "Needs the GUILD_MEMBERS privileged intent for the bot. Read at server start.",
							 &lhd_gateway_enabled,
							 false,
							 /* As lhdiscord.database: see there. */
							 process_shared_preload_libraries_in_progress ? PGC_POSTMASTER : PGC_SIGHUP,
							 0,
							 NULL, NULL, NULL);

	MarkGUCPrefixReserved("lhdiscord");
}
