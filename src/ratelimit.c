/*-------------------------------------------------------------------------
 *
 * ratelimit.c
 *	  Pacing of Discord requests: buckets, the global limit, 429s and the
 *	  invalid-request budget.
 *
 * Owns the decision "may this request go now, or in how many ms?".  Buckets
 * are learned from X-RateLimit-Bucket per (route, major parameter) and
 * paced by Remaining / Reset-After *before* a 429 happens: a bucket with
 * nothing left waits for its reset, counting requests still in flight.  An
 * unknown route sends one request at a time until a response teaches its
 * bucket.  The global limit must hold where Discord counts, by arrival:
 * requests are spread evenly (one every 1/(0.96 x limit) s, no bursts that
 * the network could bunch further), and a sliding window over send times
 * keeps any 1.045 s under the limit less one (a ceiling of 0.94 of the
 * limit: 45 ms of skew between send and arrival are absorbed).  A bucket is assumed refilled
 * only BUCKET_MARGIN_MS after its reset, so a request does not reach Discord
 * just before the reset there.
 * A 429 blocks the bucket or, when global, everything, for retry_after.
 * Every wait Discord asks for (retry_after, Reset-After) is capped at
 * lhdiscord.rate_limit_max_wait, so one absurd value cannot wedge the
 * worker; a reload ends a pending global wait.
 *
 * 401, 403 and 429 responses are counted per second over ten minutes
 * (Discord bans at 10,000): from half of lhdiscord.invalid_request_budget
 * the pace drops to one request per second, at the budget sending stops
 * until the window drains.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "utils/hsearch.h"

#include "lhdiscord.h"
#include "lhd_ratelimit.h"

#define KEY_LEN			160
#define WINDOW_SECONDS	600
#define GLOBAL_RING		1024	/* max global limit that is tracked exactly */
#define MARGIN_MS		15		/* slack against clock granularity */
#define WINDOW_MARGIN_MS 45		/* send vs. arrival skew, for the global window */
#define BUCKET_MARGIN_MS 100	/* our clock vs. Discord's, for a bucket's reset */
#define PACE_FRACTION	0.96	/* of the global limit, for even spacing */

typedef struct RouteEntry
{
	char		key[KEY_LEN];	/* route|major */
	char		bucket[KEY_LEN];	/* learned bucket|major, or "" */
	int			inflight;
} RouteEntry;

typedef struct BucketEntry
{
	char		key[KEY_LEN];	/* bucket|major */
	int			limit;
	int			remaining;
	int64		reset_at_ms;
	int			inflight;
} BucketEntry;

struct LhdLimiter
{
	HTAB	   *routes;
	HTAB	   *buckets;
	int64		global_blocked_until;
	int64		sends[GLOBAL_RING];	/* ring of recent send times */
	int			send_head;
	int			send_count;
	int64		last_send;
	double		next_slot_ms;	/* earliest time of the next evenly spaced send */
	/* invalid requests, per second over WINDOW_SECONDS */
	int			invalid[WINDOW_SECONDS];
	int64		invalid_second[WINDOW_SECONDS];
	/* their total, as of second invalid_total_at (-1: recount) */
	int			invalid_total;
	int64		invalid_total_at;
};

static void
make_key(char *dst, const char *a, const char *b)
{
	snprintf(dst, KEY_LEN, "%s|%s", a, b ? b : "");
}

LhdLimiter *
lhd_limiter_create(MemoryContext cxt)
{
	LhdLimiter *l = MemoryContextAllocZero(cxt, sizeof(LhdLimiter));
	HASHCTL		ctl;

	memset(&ctl, 0, sizeof(ctl));
	ctl.keysize = KEY_LEN;
	ctl.entrysize = sizeof(RouteEntry);
	ctl.hcxt = cxt;
	l->routes = hash_create("lhdiscord routes", 64, &ctl, HASH_ELEM | HASH_STRINGS | HASH_CONTEXT);
	ctl.entrysize = sizeof(BucketEntry);
	l->buckets = hash_create("lhdiscord buckets", 64, &ctl, HASH_ELEM | HASH_STRINGS | HASH_CONTEXT);
	l->invalid_total_at = -1;
	return l;
}

/*
 * The requests in flight died with their transport: none is outstanding.
 * What was learned (buckets, blocks, invalid requests) stays.
 */
void
lhd_limiter_forget_inflight(LhdLimiter *l)
{
	HASH_SEQ_STATUS seq;
	RouteEntry *re;
	BucketEntry *b;

	hash_seq_init(&seq, l->routes);
	while ((re = hash_seq_search(&seq)) != NULL)
		re->inflight = 0;
	hash_seq_init(&seq, l->buckets);
	while ((b = hash_seq_search(&seq)) != NULL)
		b->inflight = 0;
}

/* Invalid requests over the last WINDOW_SECONDS (recounted once a second). */
int
lhd_limiter_invalid_count(LhdLimiter *l, int64 now_ms)
{
	int64		sec = now_ms / 1000;

	if (l->invalid_total_at != sec)
	{
		l->invalid_total = 0;
		for (int i = 0; i < WINDOW_SECONDS; i++)
			if (l->invalid_second[i] > sec - WINDOW_SECONDS)
				l->invalid_total += l->invalid[i];
		l->invalid_total_at = sec;
	}
	return l->invalid_total;
}

static BucketEntry *
bucket_of(LhdLimiter *l, const char *route, const char *major, RouteEntry **re_out)
{
	char		key[KEY_LEN];
	bool		found;
	RouteEntry *re;

	make_key(key, route, major);
	re = hash_search(l->routes, key, HASH_ENTER, &found);
	if (!found)
	{
		re->bucket[0] = '\0';
		re->inflight = 0;
	}
	*re_out = re;
	if (re->bucket[0] == '\0')
		return NULL;
	return hash_search(l->buckets, re->bucket, HASH_FIND, NULL);
}

/*
 * Milliseconds until a request on (route, major) may be sent; 0 = now.
 * LHD_LIMIT_WAIT_RESPONSE means "when an outstanding response arrives".
 */
int64
lhd_limiter_delay(LhdLimiter *l, const char *route, const char *major, int64 now_ms)
{
	RouteEntry *re;
	BucketEntry *b;
	int64		wait = 0;
	int			invalid = lhd_limiter_invalid_count(l, now_ms);

	if (l->global_blocked_until > now_ms)
		wait = Max(wait, l->global_blocked_until - now_ms);

	/* Stay far from Discord's invalid-request ban. */
	if (invalid >= lhd_invalid_request_budget)
		wait = Max(wait, 1000);
	else if (invalid >= lhd_invalid_request_budget / 2 && l->last_send + 1000 > now_ms)
		wait = Max(wait, l->last_send + 1000 - now_ms);

	if (lhd_global_rate_limit > 0)
	{
		/* Room for one more than the window allows is never taken. */
		int			limit = Max(Min(lhd_global_rate_limit, GLOBAL_RING) - 1, 1);

		if (l->next_slot_ms > (double) now_ms)
			wait = Max(wait, (int64) (l->next_slot_ms - (double) now_ms) + 1);
		if (l->send_count >= limit)
		{
			/* The limit-th most recent send must be over a second ago. */
			int			idx = (l->send_head - limit + GLOBAL_RING) % GLOBAL_RING;
			int64		oldest = l->sends[idx];

			if (oldest + 1000 + WINDOW_MARGIN_MS > now_ms)
				wait = Max(wait, oldest + 1000 + WINDOW_MARGIN_MS - now_ms);
		}
	}

	b = bucket_of(l, route, major, &re);
	if (b == NULL)
	{
		/* Unknown bucket: one request at a time until a response tells. */
		if (re->inflight > 0)
			return Max(wait, LHD_LIMIT_WAIT_RESPONSE);
	}
	else if (b->reset_at_ms + BUCKET_MARGIN_MS > now_ms && b->remaining - b->inflight <= 0)
		wait = Max(wait, b->reset_at_ms + BUCKET_MARGIN_MS - now_ms);
	else if (b->reset_at_ms + BUCKET_MARGIN_MS <= now_ms && b->limit > 0 && b->inflight >= b->limit)
		return Max(wait, LHD_LIMIT_WAIT_RESPONSE);
	return wait;
}

void
lhd_limiter_sent(LhdLimiter *l, const char *route, const char *major, int64 now_ms)
{
	RouteEntry *re;
	BucketEntry *b = bucket_of(l, route, major, &re);

	re->inflight++;
	if (b)
	{
		/* A reset passed (with a margin) means a fresh window: assume it refilled. */
		if (b->reset_at_ms + BUCKET_MARGIN_MS <= now_ms && b->limit > 0)
			b->remaining = b->limit;
		b->inflight++;
	}
	l->sends[l->send_head] = now_ms;
	l->send_head = (l->send_head + 1) % GLOBAL_RING;
	if (l->send_count < GLOBAL_RING)
		l->send_count++;
	l->last_send = now_ms;
	if (lhd_global_rate_limit > 0)
		l->next_slot_ms = Max(l->next_slot_ms, (double) now_ms) +
			1000.0 / (PACE_FRACTION * (double) lhd_global_rate_limit);
}

/* A request on this route (and bucket) is no longer in flight. */
static void
release_inflight(RouteEntry *re, BucketEntry *b)
{
	if (re->inflight > 0)
		re->inflight--;
	if (b && b->inflight > 0)
		b->inflight--;
}

static void
count_invalid(LhdLimiter *l, int64 now_ms)
{
	int64		sec = now_ms / 1000;
	int			slot = (int) (sec % WINDOW_SECONDS);

	if (l->invalid_second[slot] != sec)
	{
		l->invalid_second[slot] = sec;
		l->invalid[slot] = 0;
	}
	l->invalid[slot]++;
	l->invalid_total_at = -1;
}

/* A wait Discord asked for, in ms, within [0, lhdiscord.rate_limit_max_wait]. */
static int64
capped_wait_ms(double seconds)
{
	double		cap = (double) lhd_rate_limit_max_wait;

	/* NaN fails both comparisons: no wait. */
	if (!(seconds > 0.0))
		return 0;
	if (seconds > cap)
		seconds = cap;
	return (int64) (seconds * 1000.0);
}

/*
 * A reload: the operator says go on.  A pending global wait ends now, and
 * so does a bucket's wait of more than a minute (an ordinary bucket resets
 * within seconds, and that wait is kept).
 */
void
lhd_limiter_clear_waits(LhdLimiter *l, int64 now_ms)
{
	HASH_SEQ_STATUS seq;
	BucketEntry *b;

	l->global_blocked_until = 0;
	hash_seq_init(&seq, l->buckets);
	while ((b = hash_seq_search(&seq)) != NULL)
		if (b->reset_at_ms > now_ms + 60000)
			b->reset_at_ms = now_ms;
}

/* Until when (monotonic ms) everything waits for a global 429; 0 = not. */
int64
lhd_limiter_blocked_until(LhdLimiter *l, int64 now_ms)
{
	return l->global_blocked_until > now_ms ? l->global_blocked_until : 0;
}

/*
 * Learn from a response (any status) to a request sent on (route, major).
 * count = false: a 401/403 that is not counted toward the invalid-request
 * budget again (answers to requests in flight when sending was paused).
 */
void
lhd_limiter_response(LhdLimiter *l, const char *route, const char *major,
					 const LhdRateHeaders *h, long status, int64 now_ms, bool count)
{
	RouteEntry *re;
	BucketEntry *b = bucket_of(l, route, major, &re);

	release_inflight(re, b);

	if (h->bucket[0] != '\0')
	{
		char		bkey[KEY_LEN];
		bool		found;
		BucketEntry *nb;

		make_key(bkey, h->bucket, major);
		if (strcmp(re->bucket, bkey) != 0)
		{
			/* First response on this route, or its bucket changed. */
			strlcpy(re->bucket, bkey, KEY_LEN);
			nb = hash_search(l->buckets, bkey, HASH_ENTER, &found);
			if (!found)
			{
				nb->limit = 0;
				nb->remaining = 0;
				nb->reset_at_ms = 0;
				nb->inflight = Max(re->inflight, 0);
			}
		}
		else
			nb = hash_search(l->buckets, bkey, HASH_ENTER, &found);
		if (h->has_remaining && h->has_reset_after)
		{
			int64		reset_at = now_ms + capped_wait_ms(h->reset_after);

			/*
			 * Responses of one window can arrive out of order: keep the
			 * lowest Remaining seen; a later reset time is a new window.
			 */
			if (reset_at > nb->reset_at_ms + 250 || nb->reset_at_ms <= now_ms)
				nb->remaining = h->remaining;
			else
				nb->remaining = Min(nb->remaining, h->remaining);
			nb->reset_at_ms = Max(reset_at, nb->reset_at_ms <= now_ms ? reset_at : nb->reset_at_ms);
		}
		if (h->limit > 0)
			nb->limit = h->limit;
		b = nb;
	}

	if (status == 429)
	{
		int64		until = now_ms + capped_wait_ms(h->retry_after) + MARGIN_MS;

		if (h->global)
			l->global_blocked_until = Max(l->global_blocked_until, until);
		else if (b)
		{
			b->remaining = 0;
			b->reset_at_ms = Max(b->reset_at_ms, until);
		}
		else
			l->global_blocked_until = Max(l->global_blocked_until, until);
		/* A shared-resource 429 does not count toward the ban. */
		if (!h->shared_scope)
			count_invalid(l, now_ms);
	}
	else if ((status == 401 || status == 403) && count)
		count_invalid(l, now_ms);
}

/* The request was never answered (timeout, connection error). */
void
lhd_limiter_abandoned(LhdLimiter *l, const char *route, const char *major)
{
	RouteEntry *re;
	BucketEntry *b = bucket_of(l, route, major, &re);

	/* bucket_of sets re: call it before reading re. */
	release_inflight(re, b);
}
