/*-------------------------------------------------------------------------
 *
 * json.c
 *	  Discord JSON bodies and responses, through jansson.
 *
 * Owns every use of jansson: building request bodies (DM channel, message
 * with nonce, guild join) and reading responses (errors, members, channels,
 * OAuth tokens, users).
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
