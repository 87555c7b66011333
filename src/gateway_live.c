/*-------------------------------------------------------------------------
 *
 * gateway_live.c
 *	  The Gateway worker's live member state: the listing and the events.
 *
 * Owns the flow of a session's member state (gateway_state.c owns the SQL
 * behind it): a listing asked for when a session starts, its
 * GUILD_MEMBERS_CHUNKs stored one transaction each, the events that arrive
 * meanwhile kept (at most GW_SEED_BUFFER_MAX) and applied in order once it
 * is complete, then a guarded full reconcile; after that each member event
 * applied in its own transaction, and the state marked current on the
 * heartbeat ACKs of a healthy session.  Any failure abandons the listing
 * and asks for a new one a second later (lhd_gw_live.reseed_at), so the
 * live state never silently diverges from Discord's.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "utils/memutils.h"
#include "utils/timestamp.h"

#include "lhdiscord.h"
#include "lhd_access.h"
#include "lhd_bgw.h"
#include "lhd_engine.h"
#include "lhd_gateway.h"
#include "lhd_json.h"

#define GW_SEED_BUFFER_MAX		100000	/* events kept while the listing arrives */
#define GW_TOUCH_MS				100		/* freshness is written at most this often (an ACK comes once an interval) */

LhdGwLive	lhd_gw_live;

static MemoryContext live_cxt = NULL;

void
lhd_gw_live_init(MemoryContext cxt)
{
	memset(&lhd_gw_live, 0, sizeof(lhd_gw_live));
	live_cxt = cxt;
}

/* Forget a listing under way (and the events kept for it). */
void
lhd_gw_live_stop(void)
{
	lhd_gw_live.seeding = false;
	lhd_gw_live.chunks_seen = 0;
	list_free_deep(lhd_gw_live.buffered);
	lhd_gw_live.buffered = NIL;
	lhd_gw_live.reseed_at = 0;
}

typedef struct SeedStep
{
	const LhdGwFrame *frame;
	bool		trusted;
	int			added;
} SeedStep;

static void
seed_begin_unit(void *arg)
{
	lhd_gw_live.snapshot_id = lhd_gw_seed_begin();
}

static void
seed_chunk_unit(void *arg)
{
	SeedStep   *s = arg;

	if (s->frame->members_json != NULL)
		s->added = lhd_gw_seed_chunk(lhd_gw_live.snapshot_id, s->frame->members_json);
}

typedef struct ApplyStep
{
	List	   *events;			/* LhdGwEvent * */
	int			applied;
} ApplyStep;

static void
apply_unit(void *arg)
{
	ApplyStep  *a = arg;
	char	   *role_id = lhd_role_id_for_key(lhd_entitlement_key);
	ListCell   *lc;

	foreach(lc, a->events)
	{
		lhd_gw_apply_event(lhd_gw_live.snapshot_id, lfirst(lc), role_id);
		a->applied++;
	}
}

static void
seed_complete_unit(void *arg)
{
	SeedStep   *s = arg;

	s->trusted = lhd_gw_seed_complete(lhd_gw_live.snapshot_id);
}

/* The listing is new evidence: reconcile everyone (with the guard). */
static void
reconcile_unit(void *arg)
{
	*(int64 *) arg = lhd_reconcile_all_internal();
}

static void
touch_unit(void *arg)
{
	lhd_gw_touch(lhd_gw_live.snapshot_id);
}

/*
 * A new listing into a new snapshot: returns the REQUEST_GUILD_MEMBERS
 * command for the caller to send (and lhd_gw_live_retry() if it cannot),
 * or NULL when the snapshot could not be made (a listing is due again).
 */
char *
lhd_gw_live_begin(void)
{
	lhd_gw_live_stop();
	if (!lhd_bgw_protected_unit(seed_begin_unit, NULL, "starting a member listing"))
	{
		lhd_gw_live.reseed_at = lhd_now_ms() + 1000;
		return NULL;
	}
	if (lhd_gw_live.nonce)
		pfree(lhd_gw_live.nonce);
	lhd_gw_live.nonce = MemoryContextStrdup(live_cxt, lhd_random_token(8));
	lhd_gw_live.seeding = true;
	lhd_gw_live.seeded = false;
	return lhd_json_gateway_request_members(lhd_guild_id, lhd_gw_live.nonce);
}

/* The listing is abandoned (or could not be asked for): another in 1 s. */
void
lhd_gw_live_retry(void)
{
	lhd_gw_live_stop();
	lhd_gw_live.seeded = false;
	lhd_gw_live.reseed_at = lhd_now_ms() + 1000;
}

/* Apply events in their own transaction; a failure lists everyone again. */
static bool
apply_events(List *events)
{
	ApplyStep	a = {events, 0};

	if (!lhd_bgw_protected_unit(apply_unit, &a, "applying a member event"))
	{
		ereport(LOG, (errmsg("lhdiscord gateway: the member state is listed again")));
		lhd_gw_live.seeded = false;
		lhd_gw_live.reseed_at = lhd_now_ms() + 1000;
		return false;
	}
	lhd_gw_live.events += a.applied;
	lhd_gw_live.last_event_at = GetCurrentTimestamp();
	lhd_gw_live.last_touch = lhd_now_ms();
	return true;
}

/* One GUILD_MEMBERS_CHUNK of the listing under way. */
void
lhd_gw_live_chunk(const LhdGwFrame *f)
{
	SeedStep	s = {f, false, 0};

	if (!lhd_gw_live.seeding || f->chunk_nonce == NULL || strcmp(f->chunk_nonce, lhd_gw_live.nonce) != 0)
		return;
	if (!lhd_bgw_protected_unit(seed_chunk_unit, &s, "storing a member chunk"))
	{
		lhd_gw_live_retry();
		return;
	}
	if (++lhd_gw_live.chunks_seen < f->chunk_count)
		return;
	if (!lhd_bgw_protected_unit(seed_complete_unit, &s, "completing the member listing"))
	{
		lhd_gw_live_retry();
		return;
	}
	lhd_gw_live.seeding = false;
	lhd_gw_live.seeded = true;
	ereport(LOG,
			(errmsg("lhdiscord gateway: member listing complete in snapshot " INT64_FORMAT " (%d chunks, %s); %d event(s) that arrived meanwhile follow",
					lhd_gw_live.snapshot_id, lhd_gw_live.chunks_seen, s.trusted ? "trusted" : "held by the shrink guard",
					list_length(lhd_gw_live.buffered))));
	if (lhd_gw_live.buffered != NIL)
	{
		List	   *events = lhd_gw_live.buffered;

		lhd_gw_live.buffered = NIL;
		(void) apply_events(events);
		list_free_deep(events);
	}
	lhd_gw_live.last_event_at = GetCurrentTimestamp();
	{
		int64		changed = 0;

		if (lhd_bgw_protected_unit(reconcile_unit, &changed, "reconciling after the member listing") &&
			changed != 0)
			ereport(LOG,
					(errmsg("lhdiscord gateway: reconcile after the member listing: %s",
							changed < 0 ? "stopped by its guard" : psprintf(INT64_FORMAT " change(s)", changed))));
	}
}

/*
 * A member event: applied now (allocated in the caller's context), kept
 * for after the listing (in the live state's), or not needed.
 */
void
lhd_gw_live_event(const LhdGwFrame *f)
{
	MemoryContext old;
	LhdGwEvent *ev;

	if (f->guild_id == NULL || strcmp(f->guild_id, lhd_guild_id) != 0 || f->member.user_id == NULL)
		return;
	if (!lhd_gw_live.seeding && !lhd_gw_live.seeded)
		return;					/* a listing is due and will hold it */
	old = MemoryContextSwitchTo(lhd_gw_live.seeding ? live_cxt : CurrentMemoryContext);
	ev = palloc0(sizeof(LhdGwEvent));
	ev->kind = strcmp(f->type, "GUILD_MEMBER_REMOVE") == 0 ? LHD_GW_REMOVE
		: strcmp(f->type, "GUILD_MEMBER_ADD") == 0 ? LHD_GW_ADD : LHD_GW_UPDATE;
	ev->type = ev->kind == LHD_GW_REMOVE ? "GUILD_MEMBER_REMOVE"
		: ev->kind == LHD_GW_ADD ? "GUILD_MEMBER_ADD" : "GUILD_MEMBER_UPDATE";
	ev->seq = f->seq;
	ev->user_id = pstrdup(f->member.user_id);
	ev->nroles = f->member.nroles;
	ev->roles = palloc0(sizeof(char *) * (ev->nroles + 1));
	for (int i = 0; i < ev->nroles; i++)
		ev->roles[i] = pstrdup(f->member.roles[i]);
	if (lhd_gw_live.seeding)
	{
		if (list_length(lhd_gw_live.buffered) >= GW_SEED_BUFFER_MAX)
		{
			MemoryContextSwitchTo(old);
			ereport(LOG, (errmsg("lhdiscord gateway: too many events during the member listing; listing again")));
			lhd_gw_live_stop();
			lhd_gw_live.reseed_at = lhd_now_ms();
			return;
		}
		lhd_gw_live.buffered = lappend(lhd_gw_live.buffered, ev);
		MemoryContextSwitchTo(old);
		return;
	}
	MemoryContextSwitchTo(old);
	(void) apply_events(list_make1(ev));
}

/* A heartbeat ACK from a healthy session: the live state is current. */
void
lhd_gw_live_healthy(void)
{
	if (!lhd_gw_live.seeded || lhd_now_ms() - lhd_gw_live.last_touch < GW_TOUCH_MS)
		return;
	if (lhd_bgw_protected_unit(touch_unit, NULL, "marking the member state current"))
	{
		lhd_gw_live.last_touch = lhd_now_ms();
		lhd_gw_live.last_event_at = GetCurrentTimestamp();
	}
}

