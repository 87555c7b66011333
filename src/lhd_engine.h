/*-------------------------------------------------------------------------
 *
 * lhd_engine.h
 *	  The outbox processing engine: jobs, tasks, requests and transports.
 *
 * A drain claims outbox jobs, turns each into a task (a small state machine
 * per job kind), lets the task emit Discord requests, hands them to a
 * transport (fake: recorded in SQL; live: libcurl), feeds the responses back
 * to the task, and records finished tasks.  Database work happens in
 * "units": in the background worker each unit is its own short transaction,
 * so no transaction stays open across HTTP; inside drain_outbox() the units
 * run in the caller's transaction.
 *
 *-------------------------------------------------------------------------
 */
#ifndef LHD_ENGINE_H
#define LHD_ENGINE_H

#include "postgres.h"

#include "lib/stringinfo.h"
#include "nodes/pg_list.h"
#include "portability/instr_time.h"

/* Discord's documented limit for message content, in characters. */
#define LHD_MESSAGE_MAX 2000

typedef enum LhdMethod
{
	LHD_GET,
	LHD_PUT,
	LHD_POST,
	LHD_DELETE
} LhdMethod;

extern const char *const lhd_method_names[];

/* What a request does; lets the fake API act without parsing paths. */
typedef enum LhdOp
{
	LHD_OP_MEMBER_GET,			/* GET /guilds/{g}/members/{u} */
	LHD_OP_ROLE_PUT,			/* PUT /guilds/{g}/members/{u}/roles/{r} */
	LHD_OP_ROLE_DELETE,			/* DELETE /guilds/{g}/members/{u}/roles/{r} */
	LHD_OP_MEMBERS_LIST,		/* GET /guilds/{g}/members?limit=&after= */
	LHD_OP_MEMBER_ADD,			/* PUT /guilds/{g}/members/{u} */
	LHD_OP_DM_CHANNEL,			/* POST /users/@me/channels */
	LHD_OP_MESSAGE,				/* POST /channels/{c}/messages */
	LHD_OP_OAUTH_TOKEN,			/* POST /oauth2/token */
	LHD_OP_OAUTH_ME				/* GET /users/@me (bearer) */
} LhdOp;

typedef enum LhdAuth
{
	LHD_AUTH_BOT,				/* Authorization: Bot <bot token> */
	LHD_AUTH_BEARER,			/* Authorization: Bearer <request's bearer> */
	LHD_AUTH_NONE				/* client credentials travel in the body */
} LhdAuth;

typedef enum LhdJobKind
{
	LHD_JOB_ROLES,
	LHD_JOB_DM,
	LHD_JOB_MEMBER_SCAN,
	LHD_JOB_GUILD_JOIN,
	LHD_JOB_TOKEN_REFRESH,
	LHD_JOB_UNKNOWN
} LhdJobKind;

/* Priority lanes, highest first (the order of SQL enum outbox_lane). */
typedef enum LhdLane
{
	LHD_LANE_URGENT,
	LHD_LANE_INTERACTIVE,
	LHD_LANE_BULK
} LhdLane;

extern const char *const lhd_lane_names[];

/* How a finished task leaves the outbox. */
typedef enum LhdOutcome
{
	LHD_OUT_NONE,				/* still running */
	LHD_OUT_DONE,
	LHD_OUT_FAILED,				/* permanent Discord error: no retry */
	LHD_OUT_RETRY,				/* transient: back to pending after a delay */
	LHD_OUT_DEAD,				/* retries exhausted */
	LHD_OUT_CONTINUE			/* more to do: straight back to pending */
} LhdOutcome;

struct LhdTask;

typedef struct LhdRequest
{
	LhdOp		op;
	LhdMethod	method;
	char	   *path;			/* appended to lhdiscord.api_base_url */
	char	   *route;			/* route template, for messages */
	const char *limit_route;	/* the route as rate limits see it */
	char	   *major;			/* major parameter (guild or channel id) */
	char	   *body;			/* request body or NULL */
	const char *content_type;	/* of body */
	const char *reason;			/* X-Audit-Log-Reason, or NULL */
	LhdAuth		auth;
	char	   *bearer;			/* secret, owned and wiped by the caller */
	bool		body_secret;	/* body holds secrets: never logged or recorded */
	char	   *query;			/* after path, e.g. "limit=1000&after=0" */
	const char *discord_user_id;	/* for fake_calls */
	const char *role_id;		/* for fake_calls */

	/* response */
	long		status;			/* HTTP status; 0 = transport failure */
	int			discord_code;	/* "code" of a Discord error body */
	char	   *resp_body;
	char	   *error;			/* transport or API error text */
	bool		paused;			/* 401: sending is paused, not the job's fault */

	struct LhdTask *task;
} LhdRequest;

/* A role set: sorted, unique Discord role ids. */
typedef struct LhdRoleSet
{
	int			n;
	char	  **ids;
} LhdRoleSet;

typedef struct LhdTask
{
	MemoryContext cxt;
	int64		job_id;
	LhdJobKind	kind;
	char	   *discord_user_id;
	int64		user_id;
	int			attempts;
	int			generation;
	char	   *reason;
	char	   *payload;		/* jsonb as text */
	char	   *nonce;			/* random, fixed when the job was queued */
	double		age_seconds;	/* since the job was queued, at the claim */
	LhdLane		lane;
	bool		superseded;		/* an urgent change folded in: end early */
	int			outstanding;	/* requests not yet answered */
	void	   *state;			/* kind-specific */

	/* outcome */
	LhdOutcome	outcome;
	long		last_status;
	char	   *last_error;
	int			retry_delay_ms;
	bool		uncounted;		/* this claim does not count as an attempt */
} LhdTask;

/* Role convergence inputs, loaded in the claim unit. */
typedef struct LhdRoleInputs
{
	bool		account_exists;
	bool		account_active;
	bool		in_brig;
	char	   *membership_level;
	char	   *staff_department;
	char	   *staff_rank;
	LhdRoleSet	portal_roles;
	bool		applied_known;
	LhdRoleSet	applied;
} LhdRoleInputs;

typedef struct LhdRoleMap
{
	int			n;
	char	  **keys;
	char	  **ids;			/* never empty strings: unset keys are dropped */
	bool		portal_leading;
} LhdRoleMap;

typedef struct LhdEngine
{
	MemoryContext cxt;
	MemoryContext unit_caller_cxt;	/* current when the unit began */
	bool		in_worker;		/* units are own transactions */
	int			mode;			/* LhdApiMode, fixed for the drain */
	char	   *guild_id;
	int			jobs_finished;

	List	   *active;			/* LhdTask * running */
	List	   *finished;		/* LhdTask * awaiting recording */
	List	   *ready;			/* LhdRequest * to send */
	List	   *completed;		/* LhdRequest * answered */
	List	   *held;			/* LhdTask * waiting for their progress to be saved */
	int			inflight;
	bool		requeued;		/* a recorded job went straight back to pending */
	bool		reconcile_requested;	/* a member scan completed */
	int64		record_blocked_until;	/* outcomes wait for rows locked by others */

	void	   *http;			/* live transport state (http.c) */
} LhdEngine;

/* Monotonic milliseconds, for pacing and the worker's schedule. */
static inline int64
lhd_now_ms(void)
{
	instr_time	t;

	INSTR_TIME_SET_CURRENT(t);
	return (int64) INSTR_TIME_GET_MILLISEC(t);
}

/* tasks.c */
extern LhdJobKind lhd_job_kind_from_text(const char *kind);
extern LhdLane lhd_lane_from_text(const char *lane);

/* engine.c */
extern LhdEngine *lhd_engine_create(bool in_worker, MemoryContext parent);
extern int	lhd_engine_claim(LhdEngine *e, int limit, bool high_only);
extern void lhd_engine_transport(LhdEngine *e, int max_wait_ms);
extern void lhd_engine_dispatch(LhdEngine *e);
extern int	lhd_engine_record(LhdEngine *e);
extern void lhd_engine_check_stalled(LhdEngine *e);
extern void lhd_engine_checkpoint(LhdEngine *e);
extern void lhd_engine_check_superseded(LhdEngine *e);
extern void lhd_worker_xact_begin(void);
extern void lhd_worker_xact_commit(void);
extern const char *const lhd_job_kind_names[];
struct LhdPlan;
extern void lhd_tasks_load(List *tasks, struct LhdPlan *plan, void (*fill) (LhdTask *t, int row));
extern int	lhd_drain(bool in_worker, int max_jobs);
extern void lhd_unit_begin(LhdEngine *e);
extern void lhd_unit_end(LhdEngine *e);
extern LhdRequest *lhd_task_request(LhdTask *t, LhdOp op, const char *fmt,...) pg_attribute_printf(3, 4);
extern void lhd_request_set_body(LhdRequest *r, char *body, const char *content_type,
								 bool secret);
extern void lhd_task_send(LhdEngine *e, LhdTask *t, LhdRequest *r);
extern void lhd_task_finish(LhdEngine *e, LhdTask *t, LhdOutcome outcome,
							long status, const char *error);
extern void lhd_task_finish_from(LhdEngine *e, LhdTask *t, LhdRequest *r);
extern void lhd_task_move_finished(LhdEngine *e, LhdTask *t);
extern void lhd_task_set_retry(LhdTask *t, int delay_ms, const char *error);
extern void lhd_task_hold(LhdEngine *e, LhdTask *t);
extern LhdOutcome lhd_classify(LhdTask *t, LhdRequest *r);
extern bool lhd_response_ok(const LhdRequest *r);
extern char *lhd_response_summary(const LhdRequest *r);

/* roles.c */
extern LhdRoleInputs *lhd_role_inputs_load(char **ids, int n);
extern LhdRoleMap *lhd_rolemap_load(void);
extern void lhd_desired_roles(const LhdRoleMap *map, const LhdRoleInputs *in,
							  LhdRoleSet *desired, LhdRoleSet *managed);
extern void lhd_roleset_from_array(LhdRoleSet *set, Datum arr, bool isnull);
extern bool lhd_roleset_contains(const LhdRoleSet *set, const char *id);
extern void lhd_roleset_add(LhdRoleSet *set, const char *id);
extern char *lhd_roleset_literal(const LhdRoleSet *set);

/* jobs_roles.c */
extern void lhd_roles_prepare(LhdEngine *e, List *tasks);
extern void lhd_roles_start(LhdEngine *e, LhdTask *t);
extern void lhd_roles_response(LhdEngine *e, LhdTask *t, LhdRequest *r);
extern void lhd_roles_record(LhdEngine *e, List *tasks);

/* jobs_dm.c */
extern int	lhd_split_message(const char *content, int max_chars, char ***parts);
extern void lhd_dm_prepare(LhdEngine *e, List *tasks);
extern void lhd_dm_start(LhdEngine *e, LhdTask *t);
extern void lhd_dm_response(LhdEngine *e, LhdTask *t, LhdRequest *r);
extern void lhd_dm_checkpoint(LhdEngine *e, List *tasks);
extern void lhd_dm_resume(LhdEngine *e, LhdTask *t);
extern void lhd_dm_record(LhdEngine *e, List *tasks);

/* jobs_scan.c */
extern void lhd_scan_prepare(LhdEngine *e, List *tasks);
extern void lhd_scan_start(LhdEngine *e, LhdTask *t);
extern void lhd_scan_response(LhdEngine *e, LhdTask *t, LhdRequest *r);
extern void lhd_scan_record(LhdEngine *e, List *tasks);

/* jobs_oauth.c */
extern void lhd_join_prepare(LhdEngine *e, List *tasks);
extern void lhd_join_start(LhdEngine *e, LhdTask *t);
extern void lhd_join_response(LhdEngine *e, LhdTask *t, LhdRequest *r);
extern void lhd_join_record(LhdEngine *e, List *tasks);
extern void lhd_refresh_prepare(LhdEngine *e, List *tasks);
extern void lhd_refresh_start(LhdEngine *e, LhdTask *t);
extern void lhd_refresh_response(LhdEngine *e, LhdTask *t, LhdRequest *r);
extern void lhd_refresh_record(LhdEngine *e, List *tasks);
extern int	lhd_queue_token_refreshes(void);

/* fake.c */
extern void lhd_fake_execute(LhdEngine *e);

/* http.c */
extern void lhd_http_step(LhdEngine *e, int max_wait_ms);
extern int	lhd_http_invalid_count(LhdEngine *e, bool *throttled);
extern void lhd_http_sync(LhdRequest *r);
extern void lhd_http_clear_waits(void);
extern int64 lhd_http_global_wait_ms(void);

#endif							/* LHD_ENGINE_H */
