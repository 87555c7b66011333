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

#endif							/* LHD_JSON_H */
