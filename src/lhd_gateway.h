/*-------------------------------------------------------------------------
 *
 * lhd_gateway.h
 *	  The Gateway worker's live member state (implemented in
 *	  gateway_state.c; used by gateway.c).
 *
 *-------------------------------------------------------------------------
 */
#ifndef LHD_GATEWAY_H
#define LHD_GATEWAY_H

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
extern int	lhd_gw_apply_event(int64 snapshot_id, const LhdGwEvent *ev,
							   const char *entitlement_role_id);

#endif							/* LHD_GATEWAY_H */
