/*-------------------------------------------------------------------------
 *
 * accounts.c
 *	  The Discord account lifecycle: link gate, link, unlink, revoke, listing
 *	  and the account helpers (Lighthouse spec sections 1, 2, 6, 7, 12, 16).
 *
 * Owns the SQL functions can_link, link_account, unlink_account,
 * revoke_account, accounts_of, has_discord_linked, avatar_url, display_name
 * and the superuser-only token accessor account_tokens.  Every function
 * validates its input first, takes the portal user's row lock before
 * checking the account limit (so two concurrent links cannot both pass it),
 * and writes nothing when it raises.  Token columns never leave these
 * functions in clear: they are stored encrypted (crypto.c) and returned as
 * NULL.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/htup_details.h"
#include "catalog/pg_type.h"
#include "executor/executor.h"
#include "fmgr.h"
#include "funcapi.h"
#include "miscadmin.h"
#include "utils/builtins.h"
#include "utils/timestamp.h"

#include "lhdiscord.h"

PG_FUNCTION_INFO_V1(can_link);
PG_FUNCTION_INFO_V1(link_account);
PG_FUNCTION_INFO_V1(unlink_account);
PG_FUNCTION_INFO_V1(revoke_account);
PG_FUNCTION_INFO_V1(accounts_of);
PG_FUNCTION_INFO_V1(has_discord_linked);
PG_FUNCTION_INFO_V1(avatar_url);
PG_FUNCTION_INFO_V1(display_name);
PG_FUNCTION_INFO_V1(account_tokens);

#define MSG_NOT_ELIGIBLE	"You are not eligible to link a Discord account."
#define MSG_LIMIT			"Maximum Discord accounts reached."
#define MSG_DUPLICATE		"This Discord account is already linked to another user."
#define MSG_UNAUTHORIZED	"This action is unauthorized."

#define ACCOUNT_COLUMNS "id, user_id, discord_user_id, username, global_name, status"

static void
raise_no_account(int64 account_id)
{
	ereport(ERROR,
			(errcode(ERRCODE_NO_DATA_FOUND),
			 errmsg("Discord account " INT64_FORMAT " does not exist", account_id)));
}

static void
raise_unauthorized(const char *detail)
{
	ereport(ERROR,
			(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
			 errmsg(MSG_UNAUTHORIZED),
			 errdetail("%s", detail)));
}

static bool
user_is_admin(int64 user_id)
{
	static LhdPlan plan = {
		.sql = "SELECT 1 FROM lhdiscord.user_roles WHERE user_id = $1 AND role = 'admin'",
		.nargs = 1,
		.argtypes = {INT8OID}
	};
	Datum		values[1] = {Int64GetDatum(user_id)};

	return lhd_exec(&plan, values, NULL, true, 1) > 0;
}

/*
 * Authorisation of the admin-only paths (revoke, restore, break-glass):
 * 42501 "This action is unauthorized." unless the portal user holds portal
 * role admin.  Checked before anything is read for the caller or written.
 * Caller must be connected to SPI.
 */
void
lhd_require_admin(int64 actor_id, const char *detail)
{
	if (!user_is_admin(actor_id))
		raise_unauthorized(detail);
}

/* The portal username of a user, or a placeholder when unknown. */
static char *
portal_username(int64 user_id)
{
	static LhdPlan plan = {
		.sql = "SELECT username FROM lhdiscord.users WHERE user_id = $1",
		.nargs = 1,
		.argtypes = {INT8OID}
	};
	Datum		values[1] = {Int64GetDatum(user_id)};

	if (lhd_exec(&plan, values, NULL, true, 1) == 0)
		return psprintf("user " INT64_FORMAT, user_id);
	return lhd_getattr_text(0, 1);
}

/*
 * The link gate (Lighthouse spec section 1).  With lock, takes the user's
 * row lock so that concurrent links of one user serialise on the limit.
 * Returns false when the user does not exist (and sets *exists).
 */
typedef struct GateResult
{
	bool		exists;
	bool		eligible;		/* level >= traveler and not in the brig */
	int64		accounts;
} GateResult;

static GateResult
check_gate(int64 user_id, bool lock)
{
	static LhdPlan user_plan = {
		.sql = "SELECT membership_level >= 'traveler' AND NOT in_brig "
		"FROM lhdiscord.users WHERE user_id = $1",
		.nargs = 1,
		.argtypes = {INT8OID}
	};
	static LhdPlan lock_plan = {
		.sql = "SELECT membership_level >= 'traveler' AND NOT in_brig "
		"FROM lhdiscord.users WHERE user_id = $1 FOR NO KEY UPDATE",
		.nargs = 1,
		.argtypes = {INT8OID}
	};
	static LhdPlan count_plan = {
		.sql = "SELECT count(*) FROM lhdiscord.discord_accounts WHERE user_id = $1",
		.nargs = 1,
		.argtypes = {INT8OID}
	};
	Datum		values[1] = {Int64GetDatum(user_id)};
	GateResult	r = {0};
	bool		isnull;

	if (lhd_exec(lock ? &lock_plan : &user_plan, values, NULL, !lock, 1) == 0)
		return r;
	r.exists = true;
	r.eligible = DatumGetBool(lhd_getattr(0, 1, &isnull));

	/*
	 * When locking, count with a fresh snapshot (read_only = false): after
	 * waiting for a concurrent link of this user to commit, its account
	 * must be counted.
	 */
	lhd_exec(&count_plan, values, NULL, !lock, 1);
	r.accounts = DatumGetInt64(lhd_getattr(0, 1, &isnull));
	return r;
}

/*
 * Build the function's composite result from SPI row `row` of a
 * "SELECT * / RETURNING *" over discord_accounts, with the token columns
 * replaced by NULL.  The tuple is formed in `cxt` so it survives SPI_finish.
 */
HeapTuple
lhd_account_tuple(TupleDesc resultdesc, int row, MemoryContext cxt)
{
	TupleDesc	spidesc = SPI_tuptable->tupdesc;
	MemoryContext old = MemoryContextSwitchTo(cxt);
	Datum	   *values = palloc(sizeof(Datum) * resultdesc->natts);
	bool	   *nulls = palloc(sizeof(bool) * resultdesc->natts);
	HeapTuple	tuple;

	/* Columns map by position: the row is the table's own row type. */
	if (spidesc->natts != resultdesc->natts)
		elog(ERROR, "lhdiscord: discord_accounts row has %d columns, the result type %d",
			 spidesc->natts, resultdesc->natts);
	heap_deform_tuple(SPI_tuptable->vals[row], spidesc, values, nulls);
	for (int i = 0; i < resultdesc->natts; i++)
	{
		const char *name = NameStr(TupleDescAttr(resultdesc, i)->attname);

		if (strcmp(name, "access_token") == 0 || strcmp(name, "refresh_token") == 0)
		{
			values[i] = (Datum) 0;
			nulls[i] = true;
		}
	}
	/* heap_form_tuple copies the values into cxt. */
	tuple = heap_form_tuple(resultdesc, values, nulls);
	MemoryContextSwitchTo(old);
	return tuple;
}

/* JSON describing an account for audit rows; never includes tokens. */
static char *
account_json(int64 account_id, const char *discord_user_id, const char *username,
			 const char *global_name, const char *status, const char *extra_key,
			 const char *extra_raw)
{
	StringInfoData buf;
	bool		first = true;

	initStringInfo(&buf);
	appendStringInfoChar(&buf, '{');
	lhd_json_append_raw(&buf, "account_id", psprintf(INT64_FORMAT, account_id), &first);
	lhd_json_append_str(&buf, "discord_user_id", discord_user_id, &first);
	lhd_json_append_str(&buf, "username", username, &first);
	lhd_json_append_str(&buf, "global_name", global_name, &first);
	lhd_json_append_str(&buf, "status", status, &first);
	if (extra_key)
		lhd_json_append_raw(&buf, extra_key, extra_raw, &first);
	appendStringInfoChar(&buf, '}');
	return buf.data;
}

/*
 * The link gate, the account limit and (when given) the duplicate check,
 * with link_account's exact errors.  Takes the user's row lock.
 */
void
lhd_require_can_link(int64 user_id, const char *discord_user_id)
{
	static LhdPlan dup_plan = {
		.sql = "SELECT 1 FROM lhdiscord.discord_accounts WHERE discord_user_id = $1",
		.nargs = 1,
		.argtypes = {TEXTOID}
	};
	GateResult	g = check_gate(user_id, true);

	if (!g.exists)
		lhd_raise_no_user(user_id);
	if (!g.eligible)
		ereport(ERROR,
				(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
				 errmsg(MSG_NOT_ELIGIBLE),
				 errdetail("Linking requires membership level traveler or above and not being in the brig.")));
	if (g.accounts >= lhd_max_discord_accounts)
		ereport(ERROR,
				(errcode(ERRCODE_CHECK_VIOLATION),
				 errmsg(MSG_LIMIT),
				 errdetail("The limit is %d (lhdiscord.max_discord_accounts).", lhd_max_discord_accounts)));
	if (discord_user_id)
	{
		Datum		values[1] = {CStringGetTextDatum(discord_user_id)};

		if (lhd_exec(&dup_plan, values, NULL, false, 1) > 0)
			ereport(ERROR,
					(errcode(ERRCODE_UNIQUE_VIOLATION),
					 errmsg(MSG_DUPLICATE)));
	}
}

/* can_link(user_id bigint) -> boolean */
Datum
can_link(PG_FUNCTION_ARGS)
{
	GateResult	g;

	lhd_require_not_null(PG_ARGISNULL(0), "user_id");
	SPI_connect();
	g = check_gate(PG_GETARG_INT64(0), false);
	SPI_finish();
	PG_RETURN_BOOL(g.exists && g.eligible && g.accounts < lhd_max_discord_accounts);
}

/*
 * link_account(user_id, discord_user_id, username, global_name, avatar_hash,
 *				access_token, refresh_token, token_expires_at)
 *	 -> discord_accounts
 */
static Datum link_account_body(PG_FUNCTION_ARGS);

/* The calling statement may hold OAuth tokens: errors never log it. */
Datum
link_account(PG_FUNCTION_ARGS)
{
	return lhd_call_hiding_statement(link_account_body, fcinfo);
}

static Datum
link_account_body(PG_FUNCTION_ARGS)
{
	static LhdPlan insert_plan = {
		.sql = "INSERT INTO lhdiscord.discord_accounts "
		"(user_id, discord_user_id, username, global_name, avatar_hash, "
		" access_token, refresh_token, token_expires_at, status, verified_at) "
		"VALUES ($1, $2, $3, $4, $5, $6, $7, $8, 'active', now()) "
		"ON CONFLICT (discord_user_id) DO NOTHING RETURNING *",
		.nargs = 8,
		.argtypes = {INT8OID, TEXTOID, TEXTOID, TEXTOID, TEXTOID, BYTEAOID, BYTEAOID, TIMESTAMPTZOID}
	};
	MemoryContext callercxt = CurrentMemoryContext;
	TupleDesc	resultdesc;
	int64		user_id;
	char	   *discord_user_id;
	char	   *username;
	char	   *global_name = NULL;
	char	   *avatar_hash = NULL;
	char	   *access_token = NULL;
	char	   *refresh_token = NULL;
	Datum		values[8];
	char		nulls[8];
	HeapTuple	result;
	int64		account_id;
	bool		isnull;
	int			inserted;
	bool		queued;
	char	   *lane;
	LhdAudit	a = {0};

	if (get_call_result_type(fcinfo, NULL, &resultdesc) != TYPEFUNC_COMPOSITE)
		elog(ERROR, "link_account: return type must be a row type");
	resultdesc = BlessTupleDesc(resultdesc);

	/* Input first: nothing is read or written for bad input. */
	lhd_require_not_null(PG_ARGISNULL(0), "user_id");
	lhd_require_not_null(PG_ARGISNULL(1), "discord_user_id");
	lhd_require_not_null(PG_ARGISNULL(2), "username");
	user_id = PG_GETARG_INT64(0);
	discord_user_id = lhd_require_snowflake(PG_GETARG_TEXT_PP(1), "Discord user id");
	username = lhd_require_text(PG_GETARG_TEXT_PP(2), "Discord username", 1, LHD_DISCORD_NAME_MAX);
	if (!PG_ARGISNULL(3))
		global_name = lhd_require_text(PG_GETARG_TEXT_PP(3), "Discord global name", 0, LHD_DISCORD_NAME_MAX);
	if (!PG_ARGISNULL(4))
	{
		avatar_hash = lhd_require_text(PG_GETARG_TEXT_PP(4), "avatar hash", 0, LHD_AVATAR_HASH_MAX);
		for (const char *p = avatar_hash; *p; p++)
			if (!((*p >= '0' && *p <= '9') || (*p >= 'a' && *p <= 'z') ||
				  (*p >= 'A' && *p <= 'Z') || *p == '_'))
				ereport(ERROR,
						(errcode(ERRCODE_INVALID_TEXT_REPRESENTATION),
						 errmsg("invalid avatar hash"),
						 errdetail("An avatar hash holds only letters, digits and '_'.")));
		if (avatar_hash[0] == '\0')
			avatar_hash = NULL;
	}
	if (global_name && global_name[0] == '\0')
		global_name = NULL;
	/* Token values are secrets: their errors never quote them. */
	if (!PG_ARGISNULL(5))
	{
		access_token = text_to_cstring(PG_GETARG_TEXT_PP(5));
		if (access_token[0] == '\0')
			access_token = NULL;
		else if (strlen(access_token) > LHD_TOKEN_MAX)
			ereport(ERROR,
					(errcode(ERRCODE_STRING_DATA_RIGHT_TRUNCATION),
					 errmsg("access token is too long")));
	}
	if (!PG_ARGISNULL(6))
	{
		refresh_token = text_to_cstring(PG_GETARG_TEXT_PP(6));
		if (refresh_token[0] == '\0')
			refresh_token = NULL;
		else if (strlen(refresh_token) > LHD_TOKEN_MAX)
			ereport(ERROR,
					(errcode(ERRCODE_STRING_DATA_RIGHT_TRUNCATION),
					 errmsg("refresh token is too long")));
	}

	SPI_connect();

	/* The gate, then the account limit, then duplicates (spec order). */
	lhd_require_can_link(user_id, discord_user_id);

	if ((access_token || refresh_token) && !lhd_encryption_key_configured())
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("cannot store OAuth tokens: lhdiscord.encryption_key is not set"),
				 errhint("Set lhdiscord.encryption_key to 64 hexadecimal digits, or link without tokens.")));

	memset(nulls, ' ', sizeof(nulls));
	values[0] = Int64GetDatum(user_id);
	values[1] = CStringGetTextDatum(discord_user_id);
	values[2] = CStringGetTextDatum(username);
	if (global_name)
		values[3] = CStringGetTextDatum(global_name);
	else
		nulls[3] = 'n';
	if (avatar_hash)
		values[4] = CStringGetTextDatum(avatar_hash);
	else
		nulls[4] = 'n';
	if (access_token)
		values[5] = PointerGetDatum(lhd_encrypt_token(access_token,
													  lhd_token_aad("access_token", discord_user_id)));
	else
		nulls[5] = 'n';
	if (refresh_token)
		values[6] = PointerGetDatum(lhd_encrypt_token(refresh_token,
													  lhd_token_aad("refresh_token", discord_user_id)));
	else
		nulls[6] = 'n';
	if (!PG_ARGISNULL(7))
		values[7] = PG_GETARG_DATUM(7);
	else
		nulls[7] = 'n';

	/*
	 * ON CONFLICT DO NOTHING waits for a concurrent link of the same id; if
	 * that one commits we lose and report the duplicate, so exactly one of
	 * two racing sessions wins.
	 */
	/* An explicit lane (link_account's ninth argument): bulk for an import. */
	lane = lhd_require_caller_lane(fcinfo, 8);
	lhd_set_pending_lane(lane);
	inserted = lhd_exec_account_dml(&insert_plan, values, nulls, 1, "Discord account linked",
									&queued);
	if (inserted == 0)
		ereport(ERROR,
				(errcode(ERRCODE_UNIQUE_VIOLATION),
				 errmsg(MSG_DUPLICATE)));
	account_id = DatumGetInt64(lhd_getattr(0, 1, &isnull));
	result = lhd_account_tuple(resultdesc, 0, callercxt);

	/*
	 * Sync all permissions: queue this Discord user's convergence (the
	 * insert trigger did, unless the SQL objects predate it), which computes
	 * the desired set when it runs.
	 */
	if (!queued)
		lhd_enqueue_convergence_in_lane(discord_user_id, user_id, "Discord account linked",
										lane ? lane : "interactive");

	a.action = "discord_account_linked";
	a.actor_user_id = user_id;
	a.subject_user_id = user_id;
	a.entity = "discord_accounts";
	a.entity_pk = psprintf(INT64_FORMAT, account_id);
	a.after_json = account_json(account_id, discord_user_id, username, global_name,
								"active", "has_tokens",
								(access_token || refresh_token) ? "true" : "false");
	a.description = psprintf("Linked Discord account %s (%s)", username, discord_user_id);
	lhd_audit(&a);

	SPI_finish();
	PG_RETURN_DATUM(HeapTupleGetDatum(result));
}

/*
 * Delete an account row (locked by the caller's SELECT ... FOR UPDATE),
 * queue the strip of every managed role it holds, and audit.
 */
static void
remove_account(int64 account_id, int64 actor_id, int64 owner_id,
			   const char *discord_user_id, const char *username,
			   const char *global_name, const char *status,
			   const char *action, const char *description)
{
	static LhdPlan delete_plan = {
		.sql = "DELETE FROM lhdiscord.discord_accounts WHERE id = $1",
		.nargs = 1,
		.argtypes = {INT8OID}
	};
	Datum		values[1] = {Int64GetDatum(account_id)};
	LhdAudit	a = {0};

	bool		queued;

	/*
	 * The delete trigger queues the convergence (we do, if the SQL objects
	 * predate it); with no account left it strips every managed role the
	 * member holds.
	 */
	lhd_exec_account_dml(&delete_plan, values, NULL, 0, description, &queued);
	if (!queued)
		lhd_enqueue_convergence(discord_user_id, owner_id, description);

	a.action = action;
	a.actor_user_id = actor_id;
	a.subject_user_id = owner_id;
	a.entity = "discord_accounts";
	a.entity_pk = psprintf(INT64_FORMAT, account_id);
	a.before_json = account_json(account_id, discord_user_id, username,
								 global_name, status, NULL, NULL);
	a.description = description;
	lhd_audit(&a);
}

typedef struct AccountRow
{
	int64		id;
	int64		user_id;
	char	   *discord_user_id;
	char	   *username;
	char	   *global_name;
	char	   *status;
} AccountRow;

static bool
lock_account(int64 account_id, AccountRow *row)
{
	static LhdPlan plan = {
		.sql = "SELECT " ACCOUNT_COLUMNS " FROM lhdiscord.discord_accounts "
		"WHERE id = $1 FOR UPDATE",
		.nargs = 1,
		.argtypes = {INT8OID}
	};
	Datum		values[1] = {Int64GetDatum(account_id)};
	bool		isnull;

	if (lhd_exec(&plan, values, NULL, false, 1) == 0)
		return false;
	row->id = account_id;
	row->user_id = DatumGetInt64(lhd_getattr(0, 2, &isnull));
	row->discord_user_id = lhd_getattr_text(0, 3);
	row->username = lhd_getattr_text(0, 4);
	row->global_name = lhd_getattr_text(0, 5);
	row->status = lhd_getattr_text(0, 6);
	return true;
}

/* unlink_account(actor_id bigint, account_id bigint): owner only. */
Datum
unlink_account(PG_FUNCTION_ARGS)
{
	int64		actor_id;
	int64		account_id;
	AccountRow	row;

	lhd_require_not_null(PG_ARGISNULL(0), "actor_id");
	lhd_require_not_null(PG_ARGISNULL(1), "account_id");
	actor_id = PG_GETARG_INT64(0);
	account_id = PG_GETARG_INT64(1);

	SPI_connect();
	if (!lock_account(account_id, &row))
		raise_no_account(account_id);
	if (row.user_id != actor_id)
		raise_unauthorized("Only the owner of a Discord account can unlink it.");

	remove_account(row.id, actor_id, row.user_id, row.discord_user_id,
				   row.username, row.global_name, row.status,
				   "discord_account_unlinked",
				   psprintf("Unlinked Discord account %s (%s)",
							row.username, row.discord_user_id));
	SPI_finish();
	PG_RETURN_VOID();
}

/* revoke_account(admin_id bigint, account_id bigint): admin only. */
Datum
revoke_account(PG_FUNCTION_ARGS)
{
	int64		admin_id;
	int64		account_id;
	AccountRow	row;

	lhd_require_not_null(PG_ARGISNULL(0), "admin_id");
	lhd_require_not_null(PG_ARGISNULL(1), "account_id");
	admin_id = PG_GETARG_INT64(0);
	account_id = PG_GETARG_INT64(1);

	SPI_connect();
	/* Authorise before revealing whether the account exists. */
	if (!user_is_admin(admin_id))
		raise_unauthorized("Only an admin can revoke a Discord account.");
	if (!lock_account(account_id, &row))
		raise_no_account(account_id);

	/* Recorded on the affected user, with the admin's name (spec section 7). */
	remove_account(row.id, admin_id, row.user_id, row.discord_user_id,
				   row.username, row.global_name, row.status,
				   "discord_account_revoked",
				   psprintf("Discord account %s (%s) revoked by admin %s",
							row.username, row.discord_user_id,
							portal_username(admin_id)));
	SPI_finish();
	PG_RETURN_VOID();
}

/*
 * accounts_of(actor_id bigint, user_id bigint) -> SETOF discord_accounts
 * The owner sees their own accounts; an admin sees anyone's.
 */
Datum
accounts_of(PG_FUNCTION_ARGS)
{
	static LhdPlan plan = {
		.sql = "SELECT * FROM lhdiscord.discord_accounts WHERE user_id = $1 ORDER BY id",
		.nargs = 1,
		.argtypes = {INT8OID}
	};
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	int64		actor_id;
	int64		user_id;
	Datum		values[1];
	int			n;

	lhd_require_not_null(PG_ARGISNULL(0), "actor_id");
	lhd_require_not_null(PG_ARGISNULL(1), "user_id");
	actor_id = PG_GETARG_INT64(0);
	user_id = PG_GETARG_INT64(1);

	InitMaterializedSRF(fcinfo, MAT_SRF_USE_EXPECTED_DESC);

	SPI_connect();
	if (actor_id != user_id && !user_is_admin(actor_id))
		raise_unauthorized("Only the owner or an admin can list a user's Discord accounts.");

	values[0] = Int64GetDatum(user_id);
	n = lhd_exec(&plan, values, NULL, true, 0);
	for (int i = 0; i < n; i++)
	{
		HeapTuple	tuple = lhd_account_tuple(rsinfo->setDesc, i,
												 rsinfo->econtext->ecxt_per_query_memory);

		tuplestore_puttuple(rsinfo->setResult, tuple);
	}
	SPI_finish();
	return (Datum) 0;
}

/* has_discord_linked(user_id) -> true when the user has an active account. */
Datum
has_discord_linked(PG_FUNCTION_ARGS)
{
	static LhdPlan plan = {
		.sql = "SELECT 1 FROM lhdiscord.discord_accounts "
		"WHERE user_id = $1 AND status = 'active' LIMIT 1",
		.nargs = 1,
		.argtypes = {INT8OID}
	};
	Datum		values[1];
	bool		linked;

	lhd_require_not_null(PG_ARGISNULL(0), "user_id");
	values[0] = Int64GetDatum(PG_GETARG_INT64(0));
	SPI_connect();
	linked = lhd_exec(&plan, values, NULL, true, 1) > 0;
	SPI_finish();
	PG_RETURN_BOOL(linked);
}

static char *
account_field(HeapTupleHeader account, const char *name)
{
	bool		isnull;
	Datum		d = GetAttributeByName(account, name, &isnull);

	if (isnull)
		return NULL;
	return TextDatumGetCString(d);
}

/*
 * avatar_url(discord_accounts) -> text
 * The CDN URL of the account's avatar (animated hashes, "a_...", as GIF), or
 * Discord's default avatar chosen by (user id >> 22) % 6.
 */
Datum
avatar_url(PG_FUNCTION_ARGS)
{
	HeapTupleHeader account = PG_GETARG_HEAPTUPLEHEADER(0);
	char	   *id = account_field(account, "discord_user_id");
	char	   *hash = account_field(account, "avatar_hash");

	if (id == NULL)
		PG_RETURN_NULL();
	if (hash != NULL && hash[0] != '\0')
		PG_RETURN_TEXT_P(cstring_to_text(psprintf("https://cdn.discordapp.com/avatars/%s/%s.%s",
												  id, hash,
												  strncmp(hash, "a_", 2) == 0 ? "gif" : "png")));
	{
		unsigned long long snowflake = strtoull(id, NULL, 10);

		PG_RETURN_TEXT_P(cstring_to_text(psprintf("https://cdn.discordapp.com/embed/avatars/%llu.png",
												  (snowflake >> 22) % 6)));
	}
}

/* display_name(discord_accounts) -> global_name, else username */
Datum
display_name(PG_FUNCTION_ARGS)
{
	HeapTupleHeader account = PG_GETARG_HEAPTUPLEHEADER(0);
	char	   *global_name = account_field(account, "global_name");
	char	   *username;

	if (global_name != NULL && global_name[0] != '\0')
		PG_RETURN_TEXT_P(cstring_to_text(global_name));
	username = account_field(account, "username");
	if (username == NULL)
		PG_RETURN_NULL();
	PG_RETURN_TEXT_P(cstring_to_text(username));
}

/*
 * account_tokens(account_id) -> (access_token, refresh_token, token_expires_at)
 * SECURITY DEFINER, not granted to PUBLIC: the only way to read tokens in
 * clear.  For the worker and for DBAs who explicitly grant it.
 */
Datum
account_tokens(PG_FUNCTION_ARGS)
{
	static LhdPlan plan = {
		.sql = "SELECT discord_user_id, access_token, refresh_token, token_expires_at "
		"FROM lhdiscord.discord_accounts WHERE id = $1",
		.nargs = 1,
		.argtypes = {INT8OID}
	};
	MemoryContext callercxt = CurrentMemoryContext;
	TupleDesc	resultdesc;
	Datum		values[3];
	bool		nulls[3] = {true, true, true};
	Datum		args[1];
	int64		account_id;
	char	   *discord_user_id;
	bool		isnull;
	HeapTuple	tuple;

	lhd_require_not_null(PG_ARGISNULL(0), "account_id");
	account_id = PG_GETARG_INT64(0);
	if (get_call_result_type(fcinfo, NULL, &resultdesc) != TYPEFUNC_COMPOSITE)
		elog(ERROR, "account_tokens: return type must be a row type");
	resultdesc = BlessTupleDesc(resultdesc);

	SPI_connect();
	args[0] = Int64GetDatum(account_id);
	if (lhd_exec(&plan, args, NULL, true, 1) == 0)
		raise_no_account(account_id);
	discord_user_id = lhd_getattr_text(0, 1);
	for (int col = 0; col < 2; col++)
	{
		Datum		d = lhd_getattr(0, col + 2, &isnull);

		if (!isnull)
		{
			char	   *plain = lhd_decrypt_token(DatumGetByteaPP(d),
												  lhd_token_aad(col == 0 ? "access_token" : "refresh_token",
															discord_user_id));
			MemoryContext old = MemoryContextSwitchTo(callercxt);

			values[col] = CStringGetTextDatum(plain);
			nulls[col] = false;
			MemoryContextSwitchTo(old);
		}
	}
	values[2] = lhd_getattr(0, 4, &isnull);
	nulls[2] = isnull;
	{
		MemoryContext old = MemoryContextSwitchTo(callercxt);

		tuple = heap_form_tuple(resultdesc, values, nulls);
		MemoryContextSwitchTo(old);
	}
	SPI_finish();
	PG_RETURN_DATUM(HeapTupleGetDatum(tuple));
}
