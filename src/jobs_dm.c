/*-------------------------------------------------------------------------
 *
 * jobs_dm.c
 *	  The DM job: deliver a message to one Discord user, exactly once.
 *
 * Owns the life of a "dm" outbox job and the splitting of long content.
 * The DM channel is created once (POST /users/@me/channels) and cached in
 * lhdiscord.dm_channels.  Each part is posted with the nonce
 * "<outbox.nonce>-<part>" and enforce_nonce = true: when a retry repeats a
 * post whose response was lost (timeout, crash), Discord returns the
 * original message instead of creating a second one.  outbox.nonce is a
 * random value fixed when the job is queued, so no two jobs share a nonce,
 * even after a failover reissued job ids or a restore.  Each confirmed part
 * is saved (parts_sent) durably before the next one is posted, so neither a
 * crash nor a retry long after Discord's nonce window resends a delivered
 * part.  Parts go out strictly in order, and the claim query never runs two
 * DMs of one recipient at once.
 *
 * DMs closed (50007) and unknown users end the job as failed, without retry.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "catalog/pg_type.h"
#include "mb/pg_wchar.h"
#include "utils/array.h"
#include "utils/builtins.h"

#include "lhdiscord.h"
#include "lhd_engine.h"
#include "lhd_json.h"

typedef struct DmState
{
	char	  **parts;
	int			nparts;
	int			sent;			/* parts delivered (or deduplicated) */
	char	   *channel_id;
	bool		channel_cached;	/* came from dm_channels */
	bool		channel_new;	/* created by this job: cache it */
	bool		channel_stale;	/* the cached channel is unknown now */
	bool		account_active; /* recipient may still be sent to */
} DmState;

/* ---------- splitting ---------- */

static bool
is_blank(const char *p, size_t len)
{
	for (size_t i = 0; i < len; i++)
		if (!(p[i] == ' ' || p[i] == '\t' || p[i] == '\n' || p[i] == '\r'))
			return false;
	return true;
}

/*
 * Split content into parts of at most max_chars characters, preferring to
 * break after a newline, then after whitespace, and only then inside a word
 * (never inside a multibyte character).  Parts of whitespace only are
 * dropped.  Returns the number of parts.
 */
int
lhd_split_message(const char *content, int max_chars, char ***parts_out)
{
	int			cap = 4;
	int			n = 0;
	char	  **parts = palloc(sizeof(char *) * cap);
	const char *p = content;

	while (*p)
	{
		const char *q = p;
		const char *last_nl = NULL;
		const char *last_ws = NULL;
		int			chars = 0;
		const char *end;

		/* Advance up to max_chars characters, remembering break points. */
		while (*q && chars < max_chars)
		{
			int			len = pg_mblen(q);

			if (*q == '\n')
				last_nl = q;
			else if (*q == ' ' || *q == '\t')
				last_ws = q;
			q += len;
			chars++;
		}
		if (*q == '\0')
			end = q;			/* the rest fits */
		else if (last_nl && last_nl > p)
			end = last_nl;
		else if (last_ws && last_ws > p)
			end = last_ws;
		else
			end = q;			/* one long word: cut at the limit */

		/* Discord refuses a message of whitespace only: drop such parts. */
		if (!is_blank(p, end - p))
		{
			if (n == cap)
			{
				cap *= 2;
				parts = repalloc(parts, sizeof(char *) * cap);
			}
			parts[n++] = pnstrdup(p, end - p);
		}
		p = end;
		/* The separator we broke at is not carried into the next part. */
		if (*p == '\n' || *p == ' ' || *p == '\t')
			p++;
	}
	*parts_out = parts;
	return n;
}

/* ---------- the job ---------- */

static void
dm_fill(LhdTask *t, int r)
{
	DmState    *st = palloc0(sizeof(DmState));
	bool		isnull;
	Datum		d;

	st->sent = DatumGetInt32(lhd_getattr(r, 2, &isnull));
	d = lhd_getattr(r, 3, &isnull);
	if (!isnull)
	{
		Datum	   *elems;
		bool	   *nulls;
		int			ne;

		deconstruct_array_builtin(DatumGetArrayTypeP(d), TEXTOID, &elems, &nulls, &ne);
		st->parts = palloc(sizeof(char *) * (ne + 1));
		for (int k = 0; k < ne; k++)
			if (!nulls[k])
				st->parts[st->nparts++] = TextDatumGetCString(elems[k]);
	}
	else
	{
		/* A job queued by hand with {"content": ...}: split here. */
		char	   *content = lhd_getattr_text(r, 4);

		if (content)
			st->nparts = lhd_split_message(content, LHD_MESSAGE_MAX, &st->parts);
	}
	st->channel_id = lhd_getattr_text(r, 5);
	st->channel_cached = (st->channel_id != NULL);
	st->account_active = DatumGetBool(lhd_getattr(r, 6, &isnull));
	t->state = st;
}

void
lhd_dm_prepare(LhdEngine *e, List *tasks)
{
	static LhdPlan plan = {
		.sql = "SELECT o.id, coalesce((o.payload->>'parts_sent')::int, 0), "
		"       CASE WHEN jsonb_typeof(o.payload->'parts') = 'array' "
		"            THEN ARRAY(SELECT jsonb_array_elements_text(o.payload->'parts')) END, "
		"       o.payload->>'content', c.channel_id, "
		"       coalesce((SELECT a.status = 'active' FROM lhdiscord.discord_accounts a "
		"                  WHERE a.discord_user_id = o.discord_user_id), "
		"                NOT o.payload ? 'notification') "
		"FROM lhdiscord.outbox o "
		"LEFT JOIN lhdiscord.dm_channels c ON c.discord_user_id = o.discord_user_id "
		"WHERE o.id = ANY ($1::bigint[])",
		.nargs = 1,
		.argtypes = {INT8ARRAYOID},
		.options = LHD_PLAN_FRESH
	};

	lhd_tasks_load(tasks, &plan, dm_fill);
}

static void
send_part(LhdEngine *e, LhdTask *t)
{
	DmState    *st = t->state;
	LhdRequest *r = lhd_task_request(t, LHD_OP_MESSAGE, "/channels/%s/messages", st->channel_id);

	r->major = st->channel_id;
	r->reason = NULL;
	/* Discord takes nonces of up to 25 characters: 20 + "-" + part. */
	lhd_request_set_body(r, lhd_json_message_body(st->parts[st->sent],
												  t->nonce ? psprintf("%s-%d", t->nonce, st->sent)
												  : psprintf(INT64_FORMAT "-%d", t->job_id, st->sent)),
						 "application/json", false);
	lhd_task_send(e, t, r);
}

static void
open_channel(LhdEngine *e, LhdTask *t)
{
	LhdRequest *r = lhd_task_request(t, LHD_OP_DM_CHANNEL, "/users/@me/channels");

	r->reason = NULL;
	lhd_request_set_body(r, lhd_json_dm_channel_body(t->discord_user_id), "application/json", false);
	lhd_task_send(e, t, r);
}

void
lhd_dm_start(LhdEngine *e, LhdTask *t)
{
	DmState    *st = t->state;

	if (st == NULL || st->nparts == 0)
	{
		lhd_task_finish(e, t, LHD_OUT_FAILED, 0, "DM job has no content");
		return;
	}
	/*
	 * A notification whose account was unlinked, revoked or brigged since it
	 * was queued is not sent; a DM queued by hand to an unlinked Discord
	 * user is (the DBA chose the recipient), unless that user is brigged.
	 */
	if (!st->account_active)
	{
		lhd_task_finish(e, t, LHD_OUT_FAILED, 0,
						"the Discord account is no longer active (unlinked, revoked or in the brig)");
		return;
	}
	if (st->sent >= st->nparts)
		lhd_task_finish(e, t, LHD_OUT_DONE, 0, NULL);
	else if (st->channel_id)
		send_part(e, t);
	else
		open_channel(e, t);
}

void
lhd_dm_response(LhdEngine *e, LhdTask *t, LhdRequest *r)
{
	DmState    *st = t->state;

	if (r->op == LHD_OP_DM_CHANNEL)
	{
		char	   *id;

		if (!lhd_response_ok(r))
		{
			lhd_task_finish_from(e, t, r);
			return;
		}
		if (!lhd_json_object_id(r->resp_body, &id))
		{
			lhd_task_finish(e, t, LHD_OUT_RETRY, r->status, "malformed DM channel response");
			return;
		}
		st->channel_id = MemoryContextStrdup(t->cxt, id);
		st->channel_new = true;
		st->channel_cached = false;
		send_part(e, t);
		return;
	}

	if (lhd_response_ok(r))
	{
		st->sent++;
		if (st->sent < st->nparts)
			lhd_task_hold(e, t);	/* saved first, then the next part */
		else
			lhd_task_finish(e, t, LHD_OUT_DONE, r->status, NULL);
		return;
	}
	if (r->discord_code == 10003 && st->channel_cached)
	{
		/* The cached channel is gone: open a new one, once. */
		st->channel_stale = true;
		st->channel_cached = false;
		st->channel_id = NULL;
		open_channel(e, t);
		return;
	}
	lhd_task_finish_from(e, t, r);
}

/* Save the parts confirmed so far of DMs that have more to send. */
void
lhd_dm_checkpoint(LhdEngine *e, List *tasks)
{
	static LhdPlan plan = {
		.sql = "UPDATE lhdiscord.outbox o SET payload = jsonb_set(o.payload, '{parts_sent}', to_jsonb(p.sent)) "
		"FROM unnest($1::bigint[], $2::int[]) AS p(id, sent) WHERE o.id = p.id",
		.nargs = 2,
		.argtypes = {INT8ARRAYOID, INT4ARRAYOID}
	};
	int			n = list_length(tasks);
	Datum	   *ids = palloc(sizeof(Datum) * n);
	Datum	   *sent = palloc(sizeof(Datum) * n);
	Datum		values[2];
	ListCell   *lc;
	int			i = 0;

	foreach(lc, tasks)
	{
		LhdTask    *t = lfirst(lc);

		ids[i] = Int64GetDatum(t->job_id);
		sent[i++] = Int32GetDatum(((DmState *) t->state)->sent);
	}
	values[0] = PointerGetDatum(construct_array_builtin(ids, n, INT8OID));
	values[1] = PointerGetDatum(construct_array_builtin(sent, n, INT4OID));
	lhd_exec(&plan, values, NULL, false, 0);
}

/* The confirmed parts are on disk: post the next one. */
void
lhd_dm_resume(LhdEngine *e, LhdTask *t)
{
	send_part(e, t);
}

/* Cache new channels, drop stale ones, save progress of retried jobs. */
void
lhd_dm_record(LhdEngine *e, List *tasks)
{
	static LhdPlan cache_plan = {
		.sql = "INSERT INTO lhdiscord.dm_channels (discord_user_id, channel_id) VALUES ($1, $2) "
		"ON CONFLICT (discord_user_id) DO UPDATE SET channel_id = EXCLUDED.channel_id, created_at = now()",
		.nargs = 2,
		.argtypes = {TEXTOID, TEXTOID}
	};
	static LhdPlan drop_plan = {
		.sql = "DELETE FROM lhdiscord.dm_channels WHERE discord_user_id = $1",
		.nargs = 1,
		.argtypes = {TEXTOID}
	};
	ListCell   *lc;
	List	   *progressed = NIL;

	foreach(lc, tasks)
	{
		LhdTask    *t = lfirst(lc);
		DmState    *st = t->state;

		if (st == NULL)
			continue;
		if (st->channel_new && st->channel_id)
		{
			Datum		values[2] = {CStringGetTextDatum(t->discord_user_id),
			CStringGetTextDatum(st->channel_id)};

			lhd_exec(&cache_plan, values, NULL, false, 0);
		}
		else if (st->channel_stale)
		{
			Datum		values[1] = {CStringGetTextDatum(t->discord_user_id)};

			lhd_exec(&drop_plan, values, NULL, false, 0);
		}
		if (st->sent > 0)
			progressed = lappend(progressed, t);
	}
	if (progressed != NIL)
		lhd_dm_checkpoint(e, progressed);
	list_free(progressed);
}
