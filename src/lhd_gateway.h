/*-------------------------------------------------------------------------
 *
 * lhd_gateway.h
 *	  The Gateway worker's parts: its live member state (gateway_live.c,
 *	  over the SQL of gateway_state.c) and GET /gateway/bot
 *	  (gateway_rest.c), used by gateway.c.
 *
 *-------------------------------------------------------------------------
 */
#ifndef LHD_GATEWAY_H
#define LHD_GATEWAY_H

#include "nodes/pg_list.h"
#include "utils/memutils.h"
#include "utils/timestamp.h"

#include "lhd_json.h"

typedef enum LhdGwEventKind
{
	LHD_GW_ADD,
	LHD_GW_UPDATE,
	LHD_GW_REMOVE
} LhdGwEventKind;

/* One GUILD_MEMBER_ADD, _UPDATE or _REMOVE. */
typedef struct LhdGwEvent
{
	LhdGwEventKind kind;
	const char *type;			/* the dispatch name, for the evidence */
	long long	seq;
	char	   *user_id;
	char	  **roles;
	int			nroles;
} LhdGwEvent;

/* Each runs in the caller's transaction, with SPI connected. */
extern int64 lhd_gw_seed_begin(void);
extern int	lhd_gw_seed_chunk(int64 snapshot_id, const char *members_json);
extern bool lhd_gw_seed_complete(int64 snapshot_id);
extern void lhd_gw_touch(int64 snapshot_id);
extern void lhd_gw_apply_event(int64 snapshot_id, const LhdGwEvent *ev,
							   const char *entitlement_role_id);

/* gateway_live.c: the session's member state. */
typedef struct LhdGwLive
{
	int64		snapshot_id;	/* the live snapshot, 0 = none yet */
	bool		seeding;		/* a listing is under way */
	bool		seeded;			/* the listing of this session is complete */
	char	   *nonce;			/* of the REQUEST_GUILD_MEMBERS under way */
	int			chunks_seen;
	List	   *buffered;		/* LhdGwEvent *, in order, while listing */
	int64		last_touch;		/* lhd_now_ms() of the last freshness write */
	int64		reseed_at;		/* a listing is due then (0: none) */
	int64		events;			/* member events applied */
	TimestampTz last_event_at;
} LhdGwLive;

extern LhdGwLive lhd_gw_live;
extern void lhd_gw_live_init(MemoryContext cxt);
extern char *lhd_gw_live_begin(void);
extern void lhd_gw_live_retry(void);
extern void lhd_gw_live_stop(void);
extern void lhd_gw_live_chunk(const LhdGwFrame *f);
extern void lhd_gw_live_event(const LhdGwFrame *f);
extern void lhd_gw_live_healthy(void);

/* gateway_rest.c: what Discord answered to GET /gateway/bot. */
typedef struct LhdGwBotAnswer
{
	long		status;			/* HTTP status; 0 = no answer */
	const char *error;			/* why, when there was no answer */
	LhdGwBot	bot;			/* a 200's body (bot.url NULL if malformed) */
	double		retry_after;	/* a 429's, -1 when absent */
} LhdGwBotAnswer;

extern void lhd_gateway_bot_request(LhdGwBotAnswer *out);

#endif							/* LHD_GATEWAY_H */
