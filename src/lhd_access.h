/*-------------------------------------------------------------------------
 *
 * lhd_access.h
 *	  Entitlement context shared by reconcile, snapshots and the views.
 *
 *-------------------------------------------------------------------------
 */
#ifndef LHD_ACCESS_H
#define LHD_ACCESS_H

#include "postgres.h"

#include "utils/timestamp.h"

/* Everything a decision depends on besides the user's own rows. */
typedef struct LhdAccessContext
{
	bool		portal_leading;
	int64		snapshot_id;	/* latest trusted complete snapshot, 0 = none */
	TimestampTz snapshot_taken_at;
	double		snapshot_age;	/* seconds, -1 when there is none */
	bool		fresh;			/* there is one and it is young enough */
	char	   *entitlement_key;
	char	   *entitlement_role_id;	/* role_map id of the key, or NULL */
	char	  **privileged;		/* lhdiscord.privileged_roles, split */
	int			nprivileged;
} LhdAccessContext;

/* The cells of the runbook's decision matrix, plus the exemption. */
typedef enum LhdRule
{
	LHD_RULE_IN_SCOPE_ENTITLED,
	LHD_RULE_IN_SCOPE_NOT_ENTITLED,
	LHD_RULE_NOT_IN_SCOPE_ENTITLED,
	LHD_RULE_NOT_IN_SCOPE_NOT_ENTITLED
} LhdRule;

typedef struct LhdDecision
{
	LhdRule		rule;
	bool		active;			/* resulting identity status is active */
	bool		remove_roles;	/* portal roles are removed */
	bool		revoke_sessions;	/* sessions revoked (on suspension) */
	bool		exempt;			/* privilege prevented a suspension */
} LhdDecision;

extern LhdDecision lhd_decide(bool in_scope, bool entitled, bool privileged);
extern const char *lhd_rule_name(LhdRule rule);
extern void lhd_access_context(LhdAccessContext *ctx);

/* reconcile.c: reconcile one user (the in_scope trigger). */
extern int	lhd_reconcile_user_internal(int64 user_id);
extern int	lhd_reconcile_user_because(int64 user_id, const char *evidence);
extern int64 lhd_reconcile_all_internal(void);

/* snapshot.c */
extern int	lhd_snapshot_add_members(int64 snapshot_id, Datum members);
extern bool lhd_snapshot_complete(int64 snapshot_id, const char *source);
extern int64 lhd_snapshot_new(TimestampTz taken_at, const char *source);

#endif							/* LHD_ACCESS_H */
