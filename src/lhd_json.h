/*-------------------------------------------------------------------------
 *
 * lhd_json.h
 *	  The jansson wrapper's interface (implemented in json.c).
 *
 * Only plain C types cross this boundary, so json.c never needs the fmgr or
 * builtins headers (jansson's json_object() clashes with a PostgreSQL
 * declaration there).  Returned strings and arrays are palloc'd.
 *
 *-------------------------------------------------------------------------
 */
#ifndef LHD_JSON_H
#define LHD_JSON_H

#include <stdbool.h>

/* Discord error body: {"code": n, "message": "...", "retry_after": x, "global": b} */
typedef struct LhdJsonError
{
	int			code;
	char	   *message;
	double		retry_after;	/* -1 when absent */
	bool		global;
	char	   *oauth_error;	/* OAuth2 {"error": "..."} */
} LhdJsonError;

extern bool lhd_json_parse_error(const char *body, LhdJsonError *out);

/* {"roles": [...]} of a guild member; false when malformed. */
extern bool lhd_json_member_roles(const char *body, char ***roles, int *n);
extern bool lhd_json_id_array(const char *body, const char *key, char ***ids, int *n);

/* A page of List Guild Members: count and the highest user id. */
extern bool lhd_json_members_page(const char *body, int *count, char **last_id);

/* {"id": "..."} of a channel or message object. */
extern bool lhd_json_object_id(const char *body, char **id);

/* OAuth2 token response. */
typedef struct LhdJsonToken
{
	char	   *access_token;
	char	   *refresh_token;
	long		expires_in;
} LhdJsonToken;

extern bool lhd_json_parse_token(const char *body, LhdJsonToken *out);

/* GET /users/@me */
typedef struct LhdJsonUser
{
	char	   *id;
	char	   *username;
	char	   *global_name;
	char	   *avatar;
} LhdJsonUser;

extern bool lhd_json_parse_user(const char *body, LhdJsonUser *out);

/* Request bodies. */
extern char *lhd_json_dm_channel_body(const char *recipient_id);
extern char *lhd_json_message_body(const char *content, const char *nonce);
extern char *lhd_json_join_body(const char *access_token);
extern char *lhd_json_member_body(const char *user_id, char **roles, int n);

/* The Gateway (gateway.c).  Opcodes as Discord documents them. */
#define LHD_GW_OP_DISPATCH				0
#define LHD_GW_OP_HEARTBEAT				1
#define LHD_GW_OP_IDENTIFY				2
#define LHD_GW_OP_RESUME				6
#define LHD_GW_OP_RECONNECT				7
#define LHD_GW_OP_REQUEST_GUILD_MEMBERS	8
#define LHD_GW_OP_INVALID_SESSION		9
#define LHD_GW_OP_HELLO					10
#define LHD_GW_OP_HEARTBEAT_ACK			11

typedef struct LhdGwMember
{
	char	   *user_id;
	bool		has_roles;		/* false for a REMOVE (a user object only) */
	char	  **roles;
	int			nroles;
} LhdGwMember;

typedef struct LhdGwFrame
{
	int			op;
	bool		has_seq;
	long long	seq;
	char	   *type;			/* dispatch event name */
	long		heartbeat_interval; /* HELLO, ms */
	bool		resumable;		/* INVALID_SESSION's d */
	char	   *session_id;		/* READY */
	char	   *resume_url;		/* READY */
	char	   *guild_id;		/* member events, chunks, GUILD_CREATE */
	long		member_count;	/* GUILD_CREATE, -1 when absent */
	LhdGwMember member;			/* GUILD_MEMBER_ADD/UPDATE/REMOVE */
	int			chunk_index;	/* GUILD_MEMBERS_CHUNK */
	int			chunk_count;
	char	   *chunk_nonce;
	char	   *members_json;	/* the chunk's members array, as JSON text */
	int			nmembers;
} LhdGwFrame;

typedef struct LhdGwBot
{
	char	   *url;
	long		remaining;		/* session starts left, -1 when absent */
	long		reset_after_ms;
	int			max_concurrency;
} LhdGwBot;

extern bool lhd_json_gateway_frame(const char *text, LhdGwFrame *f);
extern bool lhd_json_gateway_bot(const char *body, LhdGwBot *out);
extern char *lhd_json_gateway_identify(const char *token, int intents);
extern char *lhd_json_gateway_resume(const char *token, const char *session_id, long long seq);
extern char *lhd_json_gateway_heartbeat(bool has_seq, long long seq);
extern char *lhd_json_gateway_request_members(const char *guild_id, const char *nonce);

#endif							/* LHD_JSON_H */
