/*-------------------------------------------------------------------------
 *
 * jobs_scan.c
 *	  The guild member scan job: List Guild Members, page by page.
 *
 * Owns the life of a "member_scan" outbox job.  Each claim fetches one page
 * (GET /guilds/{id}/members?limit=1000&after=<cursor>) and its record
 * stores the page and the new cursor in the same short transaction, then
 * puts the job straight back in the queue; so a scan of any size holds no
 * transaction across HTTP, keeps memory to one page, and resumes where it
 * stopped after a crash.  The page that returns fewer than 1000 members is
 * the last: only then is the snapshot complete (and checked by the shrink
 * guard), and a reconcile is requested.  A scan that fails midway (retries
 * exhausted) leaves its snapshot incomplete, so it is never used.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "catalog/pg_type.h"
#include "utils/array.h"
#include "utils/builtins.h"

#include "lhdiscord.h"
#include "lhd_access.h"
#include "lhd_engine.h"
#include "lhd_json.h"

#define PAGE_SIZE 1000

typedef struct MemberScan
{
	int64		snapshot_id;
	char	   *after;			/* cursor: highest user id stored so far */
	bool		complete;		/* the snapshot was complete already */
	char	   *page;			/* body of the page fetched */
	int			count;
	char	   *last_id;
} MemberScan;

static void
scan_fill(LhdTask *t, int r)
{
	MemberScan *st = palloc0(sizeof(MemberScan));
	bool		isnull;
	Datum		d;

	d = lhd_getattr(r, 2, &isnull);
	st->snapshot_id = isnull ? 0 : DatumGetInt64(d);
	st->after = lhd_getattr_text(r, 3);
	d = lhd_getattr(r, 4, &isnull);
	st->complete = !isnull && DatumGetBool(d);
	t->state = st;
}

void
lhd_scan_prepare(LhdEngine *e, List *tasks)
{
	static LhdPlan plan = {
		.sql = "SELECT o.id, s.id, s.scan_after, s.complete FROM lhdiscord.outbox o "
		"LEFT JOIN lhdiscord.member_snapshots s ON s.id = (o.payload->>'snapshot_id')::bigint "
		"WHERE o.id = ANY ($1::bigint[])",
		.nargs = 1,
		.argtypes = {INT8ARRAYOID},
		.options = LHD_PLAN_FRESH
	};

	lhd_tasks_load(tasks, &plan, scan_fill);
}

void
lhd_scan_start(LhdEngine *e, LhdTask *t)
{
	MemberScan  *st = t->state;
	LhdRequest *r;

	if (st == NULL || st->snapshot_id == 0)
	{
		lhd_task_finish(e, t, LHD_OUT_FAILED, 0, "member scan job without a snapshot");
		return;
	}
	if (st->complete)
	{
		lhd_task_finish(e, t, LHD_OUT_DONE, 0, NULL);
		return;
	}
	r = lhd_task_request(t, LHD_OP_MEMBERS_LIST, "/guilds/%s/members", e->guild_id);
	r->query = MemoryContextStrdup(t->cxt, psprintf("limit=%d&after=%s", PAGE_SIZE,
													st->after ? st->after : "0"));
	r->reason = NULL;
	lhd_task_send(e, t, r);
}

void
lhd_scan_response(LhdEngine *e, LhdTask *t, LhdRequest *r)
{
	MemberScan  *st = t->state;
	int			count;
	char	   *last_id;

	if (!lhd_response_ok(r))
	{
		lhd_task_finish_from(e, t, r);
		return;
	}
	if (!lhd_json_members_page(r->resp_body, &count, &last_id))
	{
		lhd_task_finish(e, t, LHD_OUT_RETRY, r->status, "malformed member list page");
		return;
	}
	st->page = r->resp_body;
	st->count = count;
	st->last_id = last_id ? MemoryContextStrdup(t->cxt, last_id) : NULL;
	/* A short page is the last one; otherwise come straight back for more. */
	lhd_task_finish(e, t, count < PAGE_SIZE ? LHD_OUT_DONE : LHD_OUT_CONTINUE, r->status, NULL);
}

/* Store the page and the cursor; complete the snapshot after the last page. */
void
lhd_scan_record(LhdEngine *e, List *tasks)
{
	static LhdPlan cursor_plan = {
		.sql = "UPDATE lhdiscord.member_snapshots "
		"SET scan_after = coalesce($2, scan_after), "
		"    taken_at = CASE WHEN scan_after IS NULL THEN now() ELSE taken_at END "
		"WHERE id = $1",
		.nargs = 2,
		.argtypes = {INT8OID, TEXTOID}
	};
	ListCell   *lc;

	foreach(lc, tasks)
	{
		LhdTask    *t = lfirst(lc);
		MemberScan  *st = t->state;
		Datum		values[2];
		char		nulls[2] = {' ', ' '};

		if (st == NULL || st->page == NULL)
			continue;
		if (t->outcome != LHD_OUT_DONE && t->outcome != LHD_OUT_CONTINUE)
			continue;
		values[0] = Int64GetDatum(st->snapshot_id);
		if (st->last_id)
			values[1] = CStringGetTextDatum(st->last_id);
		else
			nulls[1] = 'n';
		lhd_exec(&cursor_plan, values, nulls, false, 0);
		if (st->count > 0)
			lhd_snapshot_add_members(st->snapshot_id,
									 DirectFunctionCall1(jsonb_in, CStringGetDatum(st->page)));
		if (t->outcome == LHD_OUT_DONE)
		{
			lhd_snapshot_complete(st->snapshot_id, "scan");
			e->reconcile_requested = true;
		}
	}
}
