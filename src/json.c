/*-------------------------------------------------------------------------
 *
 * json.c
 *	  Discord JSON bodies and responses, through jansson.
 *
 * Owns every use of jansson: building request bodies (DM channel, message
 * with nonce, guild join) and reading responses (errors, members, channels,
 * OAuth tokens, users), and the Gateway's payloads (reading its messages;
 * building IDENTIFY, RESUME, heartbeats and member requests).
 *
 * jansson's json_object() collides with PostgreSQL's SQL function of the
 * same name twice over: at compile time (utils/builtins.h declares it, so
 * this file includes no fmgr or builtins header) and at run time (the
 * postgres executable exports the symbol, and the dynamic linker binds our
 * undefined reference to it, not to libjansson).  So this file never calls
 * json_object(): new_object() lets libjansson allocate the object, and
 * libjansson's own internal calls are bound inside the library.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <jansson.h>

#include "lhd_json.h"

/* An empty JSON object, allocated inside libjansson (see header comment). */
static json_t *
new_object(void)
{
	json_t	   *o = json_pack("{}");

	if (o == NULL)
		elog(ERROR, "lhdiscord: out of memory building JSON");
	return o;
}

static char *
dup_string(json_t *v)
{
	if (!json_is_string(v))
		return NULL;
	return pstrdup(json_string_value(v));
}

/* A Discord id may arrive as a string or (rarely) a number. */
static char *
dup_id(json_t *v)
{
	if (json_is_string(v))
		return pstrdup(json_string_value(v));
	if (json_is_integer(v))
		return psprintf("%lld", (long long) json_integer_value(v));
	return NULL;
}

static json_t *
load(const char *body)
{
	json_error_t err;

	if (body == NULL || body[0] == '\0')
		return NULL;
	return json_loads(body, JSON_DECODE_ANY, &err);
}

/* Serialise and free; the result is palloc'd. */
static char *
dump(json_t *root)
{
	char	   *raw = json_dumps(root, JSON_COMPACT);
	char	   *out;

	json_decref(root);
	if (raw == NULL)
		elog(ERROR, "lhdiscord: could not serialise JSON");
	out = pstrdup(raw);
	/* A guild join body holds an access token. */
	explicit_bzero(raw, strlen(raw));
	free(raw);
	return out;
}

bool
lhd_json_parse_error(const char *body, LhdJsonError *out)
{
	json_t	   *root = load(body);
	json_t	   *v;

	memset(out, 0, sizeof(*out));
	out->retry_after = -1;
	if (root == NULL || !json_is_object(root))
	{
		if (root)
			json_decref(root);
		return false;
	}
	v = json_object_get(root, "code");
	if (json_is_integer(v))
		out->code = (int) json_integer_value(v);
	out->message = dup_string(json_object_get(root, "message"));
	v = json_object_get(root, "retry_after");
	if (json_is_number(v))
		out->retry_after = json_number_value(v);
	out->global = json_is_true(json_object_get(root, "global"));
	out->oauth_error = dup_string(json_object_get(root, "error"));
	json_decref(root);
	return true;
}

bool
lhd_json_member_roles(const char *body, char ***roles, int *n)
{
	return lhd_json_id_array(body, "roles", roles, n);
}

/*
 * The snowflakes of array member key of the object in body; false when
 * body is no object or key no array.
 */
bool
lhd_json_id_array(const char *body, const char *key, char ***roles, int *n)
{
	json_t	   *root = load(body);
	json_t	   *arr;
	size_t		i;
	json_t	   *v;

	*roles = NULL;
	*n = 0;
	if (root == NULL)
		return false;
	arr = json_object_get(root, key);
	if (!json_is_array(arr))
	{
		json_decref(root);
		return false;
	}
	*roles = palloc0(sizeof(char *) * (json_array_size(arr) + 1));
	json_array_foreach(arr, i, v)
	{
		char	   *id = dup_id(v);

		if (id)
			(*roles)[(*n)++] = id;
	}
	json_decref(root);
	return true;
}

bool
lhd_json_members_page(const char *body, int *count, char **last_id)
{
	json_t	   *root = load(body);
	size_t		i;
	json_t	   *m;
	unsigned long long best = 0;

	*count = 0;
	*last_id = NULL;
	if (root == NULL || !json_is_array(root))
	{
		if (root)
			json_decref(root);
		return false;
	}
	json_array_foreach(root, i, m)
	{
		char	   *id = dup_id(json_object_get(json_object_get(m, "user"), "id"));
		unsigned long long num;

		if (id == NULL)
		{
			json_decref(root);
			return false;
		}
		num = strtoull(id, NULL, 10);
		if (*last_id == NULL || num > best)
		{
			best = num;
			*last_id = id;
		}
		(*count)++;
	}
	json_decref(root);
	return true;
}

bool
lhd_json_object_id(const char *body, char **id)
{
	json_t	   *root = load(body);

	*id = NULL;
	if (root == NULL)
		return false;
	*id = dup_id(json_object_get(root, "id"));
	json_decref(root);
	return *id != NULL;
}

bool
lhd_json_parse_token(const char *body, LhdJsonToken *out)
{
	json_t	   *root = load(body);
	json_t	   *v;

	memset(out, 0, sizeof(*out));
	if (root == NULL)
		return false;
	out->access_token = dup_string(json_object_get(root, "access_token"));
	out->refresh_token = dup_string(json_object_get(root, "refresh_token"));
	v = json_object_get(root, "expires_in");
	out->expires_in = json_is_integer(v) ? (long) json_integer_value(v) : 0;
	json_decref(root);
	return out->access_token != NULL;
}

bool
lhd_json_parse_user(const char *body, LhdJsonUser *out)
{
	json_t	   *root = load(body);

	memset(out, 0, sizeof(*out));
	if (root == NULL)
		return false;
	out->id = dup_id(json_object_get(root, "id"));
	out->username = dup_string(json_object_get(root, "username"));
	out->global_name = dup_string(json_object_get(root, "global_name"));
	out->avatar = dup_string(json_object_get(root, "avatar"));
	json_decref(root);
	return out->id != NULL && out->username != NULL;
}

/* {"<key>": "<value>"} */
static char *
string_field_body(const char *key, const char *value)
{
	json_t	   *root = new_object();

	json_object_set_new(root, key, json_string(value));
	return dump(root);
}

char *
lhd_json_dm_channel_body(const char *recipient_id)
{
	return string_field_body("recipient_id", recipient_id);
}

/* Create Message with a nonce Discord enforces: a retry returns the original. */
char *
lhd_json_message_body(const char *content, const char *nonce)
{
	json_t	   *root = new_object();

	json_object_set_new(root, "content", json_string(content));
	json_object_set_new(root, "nonce", json_string(nonce));
	json_object_set_new(root, "enforce_nonce", json_true());
	return dump(root);
}

char *
lhd_json_join_body(const char *access_token)
{
	return string_field_body("access_token", access_token);
}

/* A guild member object (used by the fake API). */
char *
lhd_json_member_body(const char *user_id, char **roles, int n)
{
	json_t	   *root = new_object();
	json_t	   *user = new_object();
	json_t	   *arr = json_array();

	json_object_set_new(user, "id", json_string(user_id));
	json_object_set_new(root, "user", user);
	for (int i = 0; i < n; i++)
		json_array_append_new(arr, json_string(roles[i]));
	json_object_set_new(root, "roles", arr);
	return dump(root);
}

/* ---------- the Gateway (gateway.c) ---------- */

/* Serialise what json_pack() built (NULL: it ran out of memory). */
static char *
dump_packed(json_t *root)
{
	if (root == NULL)
		elog(ERROR, "lhdiscord: out of memory building JSON");
	return dump(root);
}

/* The id and role ids of a guild member object (or a user, for a REMOVE). */
static void
gateway_member(json_t *d, LhdGwMember *m)
{
	json_t	   *roles = json_object_get(d, "roles");
	size_t		i;
	json_t	   *v;

	m->user_id = dup_id(json_object_get(json_object_get(d, "user"), "id"));
	m->has_roles = json_is_array(roles);
	m->nroles = 0;
	m->roles = palloc0(sizeof(char *) * (m->has_roles ? json_array_size(roles) + 1 : 1));
	if (m->has_roles)
		json_array_foreach(roles, i, v)
		{
			char	   *id = dup_id(v);

			if (id)
				m->roles[m->nroles++] = id;
		}
}

/*
 * A Gateway payload {"op", "d", "s", "t"}: the fields the Gateway worker
 * acts on, by opcode and dispatch type.  False when it is no JSON object
 * with an integer op.
 */
bool
lhd_json_gateway_frame(const char *text, LhdGwFrame *f)
{
	json_t	   *root = load(text);
	json_t	   *op;
	json_t	   *s;
	json_t	   *d;

	memset(f, 0, sizeof(*f));
	if (root == NULL || !json_is_object(root) || !json_is_integer(op = json_object_get(root, "op")))
	{
		if (root)
			json_decref(root);
		return false;
	}
	f->op = (int) json_integer_value(op);
	s = json_object_get(root, "s");
	if (json_is_integer(s))
	{
		f->has_seq = true;
		f->seq = (long long) json_integer_value(s);
	}
	f->type = dup_string(json_object_get(root, "t"));
	d = json_object_get(root, "d");

	switch (f->op)
	{
		case LHD_GW_OP_HELLO:
			{
				json_t	   *hb = json_object_get(d, "heartbeat_interval");

				f->heartbeat_interval = json_is_number(hb) ? (long) json_number_value(hb) : 0;
			}
			break;
		case LHD_GW_OP_INVALID_SESSION:
			f->resumable = json_is_true(d);
			break;
		case LHD_GW_OP_DISPATCH:
			if (f->type == NULL || !json_is_object(d))
				break;
			f->guild_id = dup_id(json_object_get(d, "guild_id"));
			if (strcmp(f->type, "READY") == 0)
			{
				f->session_id = dup_string(json_object_get(d, "session_id"));
				f->resume_url = dup_string(json_object_get(d, "resume_gateway_url"));
			}
			else if (strcmp(f->type, "GUILD_CREATE") == 0)
			{
				json_t	   *mc = json_object_get(d, "member_count");

				f->guild_id = dup_id(json_object_get(d, "id"));
				f->member_count = json_is_integer(mc) ? (long) json_integer_value(mc) : -1;
			}
			else if (strcmp(f->type, "GUILD_MEMBER_ADD") == 0 ||
					 strcmp(f->type, "GUILD_MEMBER_UPDATE") == 0 ||
					 strcmp(f->type, "GUILD_MEMBER_REMOVE") == 0)
				gateway_member(d, &f->member);
			else if (strcmp(f->type, "GUILD_MEMBERS_CHUNK") == 0)
			{
				json_t	   *members = json_object_get(d, "members");
				json_t	   *v;

				v = json_object_get(d, "chunk_index");
				f->chunk_index = json_is_integer(v) ? (int) json_integer_value(v) : 0;
				v = json_object_get(d, "chunk_count");
				f->chunk_count = json_is_integer(v) ? (int) json_integer_value(v) : 1;
				f->chunk_nonce = dup_string(json_object_get(d, "nonce"));
				if (json_is_array(members))
				{
					char	   *raw = json_dumps(members, JSON_COMPACT);

					if (raw != NULL)
					{
						f->members_json = pstrdup(raw);
						free(raw);
					}
					f->nmembers = (int) json_array_size(members);
				}
			}
			break;
		default:
			break;
	}
	json_decref(root);
	return true;
}

/* GET /gateway/bot: the URL and the session start limit. */
bool
lhd_json_gateway_bot(const char *body, LhdGwBot *out)
{
	json_t	   *root = load(body);
	json_t	   *limit;
	json_t	   *v;

	memset(out, 0, sizeof(*out));
	out->max_concurrency = 1;
	if (root == NULL || !json_is_object(root))
	{
		if (root)
			json_decref(root);
		return false;
	}
	out->url = dup_string(json_object_get(root, "url"));
	limit = json_object_get(root, "session_start_limit");
	v = json_object_get(limit, "remaining");
	out->remaining = json_is_integer(v) ? (long) json_integer_value(v) : -1;
	v = json_object_get(limit, "reset_after");
	out->reset_after_ms = json_is_integer(v) ? (long) json_integer_value(v) : 0;
	v = json_object_get(limit, "max_concurrency");
	if (json_is_integer(v) && json_integer_value(v) > 0)
		out->max_concurrency = (int) json_integer_value(v);
	json_decref(root);
	return out->url != NULL;
}

/* IDENTIFY (op 2): holds the bot token; the caller wipes it after sending. */
char *
lhd_json_gateway_identify(const char *token, int intents)
{
	return dump_packed(json_pack("{s:i, s:{s:s, s:i, s:{s:s, s:s, s:s}}}",
										"op", LHD_GW_OP_IDENTIFY, "d",
										"token", token, "intents", intents,
										"properties", "os", "linux", "browser", "lhdiscord",
										"device", "lhdiscord"));
}

/* RESUME (op 6): holds the bot token too. */
char *
lhd_json_gateway_resume(const char *token, const char *session_id, long long seq)
{
	return dump_packed(json_pack("{s:i, s:{s:s, s:s, s:I}}",
										"op", LHD_GW_OP_RESUME, "d",
										"token", token, "session_id", session_id, "seq", (json_int_t) seq));
}

/* HEARTBEAT (op 1): the last sequence number, or null before the first. */
char *
lhd_json_gateway_heartbeat(bool has_seq, long long seq)
{
	return dump_packed(has_seq
					   ? json_pack("{s:i, s:I}", "op", LHD_GW_OP_HEARTBEAT, "d", (json_int_t) seq)
					   : json_pack("{s:i, s:n}", "op", LHD_GW_OP_HEARTBEAT, "d"));
}

/* REQUEST_GUILD_MEMBERS (op 8): every member, in chunks, tagged with nonce. */
char *
lhd_json_gateway_request_members(const char *guild_id, const char *nonce)
{
	return dump_packed(json_pack("{s:i, s:{s:s, s:s, s:i, s:s}}",
										"op", LHD_GW_OP_REQUEST_GUILD_MEMBERS, "d",
										"guild_id", guild_id, "query", "", "limit", 0, "nonce", nonce));
}
