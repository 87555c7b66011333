/*-------------------------------------------------------------------------
 *
 * lhdiscord.h
 *	  Internal interfaces shared between the lhdiscord translation units.
 *
 * Every SQL-callable function is declared by PG_FUNCTION_INFO_V1 in the file
 * that owns it; this header only carries what one concern exposes to
 * another: configuration variables, validation helpers, the audit writer,
 * the outbox queueing API and the crypto primitives.
 *
 * The jansson wrapper (json.c) has its own header, lhd_json.h, because it
 * must not see the fmgr/builtins declarations pulled in here.
 *
 *-------------------------------------------------------------------------
 */
#ifndef LHDISCORD_H
#define LHDISCORD_H

#include "postgres.h"

#include "lhd_compat.h"

#include "access/htup.h"
#include "access/tupdesc.h"
#include "executor/spi.h"
#include "fmgr.h"
#include "nodes/parsenodes.h"
#include "lib/stringinfo.h"

#define LHD_VERSION		"0.7.0"
#define LHD_PROJECT_URL	"https://github.com/lighthouse-portal/lhdiscord"

/* Discord limits the extension enforces on input. */
#define LHD_DISCORD_NAME_MAX	32	/* username and global_name */
#define LHD_AVATAR_HASH_MAX		64
#define LHD_TOKEN_MAX			4096
#define LHD_ROLE_NAME_MAX		100

/* ---------- config.c ---------- */

typedef enum LhdApiMode
{
	LHD_API_LIVE,
	LHD_API_FAKE
} LhdApiMode;

typedef enum LhdGovernanceMode
{
	LHD_GOV_DISCORD_LEADING,
	LHD_GOV_PORTAL_LEADING
} LhdGovernanceMode;

extern char *lhd_database;
extern char *lhd_api_base_url;
extern int	lhd_api_mode;
extern char *lhd_bot_token;
extern char *lhd_guild_id;
extern char *lhd_client_id;
extern char *lhd_client_secret;
extern char *lhd_redirect_uri;
extern char *lhd_encryption_key;
extern int	lhd_max_discord_accounts;
extern int	lhd_governance_mode;
extern char *lhd_entitlement_key;
extern int	lhd_snapshot_max_age;
extern char *lhd_privileged_roles;
extern int	lhd_reconcile_interval;
extern int	lhd_reconcile_max_suspend_percent;
extern int	lhd_snapshot_max_shrink_percent;
extern int	lhd_max_concurrency;
extern int	lhd_request_timeout_ms;
extern int	lhd_global_rate_limit;
extern int	lhd_invalid_request_budget;
extern int	lhd_poll_interval;
extern int	lhd_outbox_retention;
extern int	lhd_oauth_state_ttl;
extern int	lhd_token_refresh_margin;
extern int	lhd_max_attempts;
extern int	lhd_retry_base_ms;
extern int	lhd_retry_max_delay;
extern int	lhd_worker_lock_timeout;
extern int	lhd_worker_statement_timeout;
extern int	lhd_rate_limit_max_wait;
extern int	lhd_job_max_age;
extern int	lhd_snapshot_retention;
extern bool lhd_gateway_enabled;

extern void lhd_define_gucs(void);

/* ---------- validate.c ---------- */

/* The rule every snowflake check states (validate.c, the domain's CHECK). */
#define LHD_SNOWFLAKE_RULE \
	"A Discord id (snowflake) is 17 to 20 decimal digits without a leading zero, at most 18446744073709551615."

/*
 * The same rule as a regular expression, for SQL text: the CHECK of domain
 * lhdiscord.snowflake and the snowflake columns (sql/lhdiscord--0.5.0--0.6.0.sql)
 * and the checks of JSON input.
 */
#define LHD_SNOWFLAKE_REGEX \
	"^([1-9][0-9]{16,18}|1[0-7][0-9]{18}|18[0-3][0-9]{17}|184[0-3][0-9]{16}|1844[0-5][0-9]{15}|18446[0-6][0-9]{14}|184467[0-3][0-9]{13}|1844674[0-3][0-9]{12}|184467440[0-6][0-9]{10}|1844674407[0-2][0-9]{9}|18446744073[0-6][0-9]{8}|1844674407370[0-8][0-9]{6}|18446744073709[0-4][0-9]{5}|184467440737095[0-4][0-9]{4}|18446744073709550[0-9]{3}|18446744073709551[0-5][0-9]{2}|1844674407370955160[0-9]|1844674407370955161[0-4]|18446744073709551615)$"

extern bool lhd_is_snowflake(const char *s);
extern bool lhd_is_role_name(const char *s);
extern void lhd_require_not_null(bool isnull, const char *argname);
extern pg_noreturn void lhd_raise_no_user(int64 user_id);
extern char *lhd_require_snowflake(text *t, const char *what);
extern char *lhd_require_text(text *t, const char *what, int minlen, int maxlen);
extern bool lhd_has_control_chars(const char *s, bool space_too);
extern int	lhd_split_list(const char *list, char ***items);
extern bool lhd_is_loopback_host(const char *host, size_t len);
extern Datum lhd_call_hiding_statement(PGFunction fn, FunctionCallInfo fcinfo);

/* ---------- spi_util.c ---------- */

/*
 * A statement prepared once per backend and kept for its lifetime.  Callers
 * declare one static LhdPlan per statement; lhd_plan() prepares it on first
 * use.  Keeping plans saves the parse/plan cost on every trigger firing.
 */
typedef struct LhdPlan
{
	SPIPlanPtr	plan;
	const char *sql;
	int			nargs;
	Oid			argtypes[8];
	int			options;		/* CURSOR_OPT_* plan-cache mode, 0 = default */
} LhdPlan;

/*
 * Statements whose good plan depends on how big the tables are now (the
 * outbox swings from empty to 100k rows between autoanalyze runs) are
 * planned afresh on every execution: a generic plan cached while a table
 * looked empty would scan it once per row.
 */
#define LHD_PLAN_FRESH CURSOR_OPT_CUSTOM_PLAN

extern int	lhd_pin_search_path(void);
extern void lhd_unpin_search_path(int nestlevel);
extern SPIPlanPtr lhd_plan(LhdPlan *p);
extern int	lhd_exec(LhdPlan *p, Datum *values, const char *nulls,
					 bool read_only, long count);
extern Datum lhd_getattr(int row, int col, bool *isnull);
extern char *lhd_getattr_text(int row, int col);
extern Datum lhd_text_array(char **items, int n);
extern void lhd_json_append_array(StringInfo buf, char **items, int n);
extern void lhd_json_append_str(StringInfo buf, const char *key,
								const char *val, bool *first);
extern void lhd_json_append_raw(StringInfo buf, const char *key,
								const char *raw, bool *first);

/* ---------- audit.c ---------- */

typedef struct LhdAudit
{
	const char *action;
	int64		actor_user_id;	/* 0 = none */
	int64		subject_user_id;	/* 0 = none */
	const char *entity;
	const char *entity_pk;
	const char *before_json;	/* NULL or a JSON text */
	const char *after_json;		/* NULL or a JSON text */
	const char *description;
} LhdAudit;

extern void lhd_audit(const LhdAudit *a);
extern char *lhd_acting_role(void);

/* outbox.c (needs LhdAudit) */
extern int	lhd_enqueue_user_convergence(int64 user_id, const char *reason,
										 int naudits, const LhdAudit *audits);

/* ---------- outbox.c ---------- */

extern bool lhd_outbox_has_lanes(void);
extern void lhd_enqueue_all_convergences(const char *reason);
extern int	lhd_enqueue_role_key_change(const char *key, const char *retired_role_id,
										const char *reason);
extern void lhd_enqueue_convergence(const char *discord_user_id, int64 user_id,
									const char *reason);
extern void lhd_enqueue_convergence_in_lane(const char *discord_user_id, int64 user_id,
											const char *reason, const char *lane);

extern int64 lhd_prune_outbox(int retention_seconds);
extern void lhd_request_worker_wake(void);

/* ---------- roles.c ---------- */

extern char *lhd_role_id_for_key(const char *key);

/* ---------- worker.c ---------- */

extern bool lhd_am_worker;
extern void lhd_register_worker(void);
extern void lhd_register_gateway(void);

/* ---------- triggers.c ---------- */

extern void lhd_trigger_require_table(FunctionCallInfo fcinfo, const char *fname,
									  const char *table, const char *table2);

extern void lhd_set_pending_lane(const char *lane);
extern char *lhd_require_caller_lane(FunctionCallInfo fcinfo, int argno);
extern int	lhd_exec_account_dml(LhdPlan *plan, Datum *values, const char *nulls,
								 long count, const char *reason, bool *queued);

/* ---------- crypto.c ---------- */

extern bytea *lhd_encrypt_token(const char *plaintext, const char *aad);
extern char *lhd_decrypt_token(bytea *ciphertext, const char *aad);
extern char *lhd_decrypt_token_soft(bytea *ciphertext, const char *aad);
extern bool lhd_encryption_key_configured(void);
extern void lhd_wipe(char *s);
extern char *lhd_random_token(size_t nbytes);
extern char *lhd_sha256_hex(const char *data, size_t len);
extern char *lhd_token_aad(const char *column, const char *discord_user_id);

/* ---------- oauth.c ---------- */

/* An access token's life when Discord's token response omits expires_in. */
#define LHD_DEFAULT_TOKEN_TTL	(7 * 24 * 3600)

extern void lhd_append_param(StringInfo buf, const char *name, const char *value);
extern bool lhd_oauth_client_configured(void);
extern char *lhd_oauth_token_form(const char *grant_type, const char *name, const char *value);

/* ---------- snapshot.c ---------- */

extern int64 lhd_prune_snapshots(void);

/* ---------- accounts.c ---------- */

extern void lhd_require_can_link(int64 user_id, const char *discord_user_id);
extern void lhd_require_admin(int64 actor_id, const char *detail);
extern HeapTuple lhd_account_tuple(TupleDesc resultdesc, int row, MemoryContext cxt);

#endif							/* LHDISCORD_H */
