/*-------------------------------------------------------------------------
 *
 * validate.c
 *	  Input validation shared by every SQL entry point.
 *
 * Owns the rules for Discord snowflakes, portal role names, bounded text
 * arguments and loopback hosts, and the exact errors raised when input is
 * rejected.  Rejection always happens before anything is written.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <ctype.h>

#include "mb/pg_wchar.h"
#include "utils/builtins.h"

#include "lhdiscord.h"

/*
 * A Discord snowflake as text, in canonical form: 17 to 20 decimal digits,
 * no leading zero, at most 2^64 - 1 (18446744073709551615).  Canonical form
 * makes text equality the same as numeric equality, so "0200..." can never
 * pass for "200..." (duplicate checks, role lookups, Discord routes).  The
 * same rule is the CHECK of domain lhdiscord.snowflake.
 */
#define LHD_SNOWFLAKE_MAX "18446744073709551615"

bool
lhd_is_snowflake(const char *s)
{
	int			n = 0;

	if (s == NULL || s[0] == '0')
		return false;
	for (; s[n]; n++)
	{
		if (s[n] < '0' || s[n] > '9')
			return false;
	}
	if (n < 17 || n > 20)
		return false;
	/* Same length: digit strings compare like the numbers they spell. */
	return n < 20 || strcmp(s, LHD_SNOWFLAKE_MAX) <= 0;
}

/*
 * A portal role name such as "admin" or "hauling.member": 1 to
 * LHD_ROLE_NAME_MAX characters out of letters, digits and . _ : -
 */
bool
lhd_is_role_name(const char *s)
{
	int			n = 0;

	if (s == NULL)
		return false;
	for (; s[n]; n++)
	{
		unsigned char c = (unsigned char) s[n];

		if (!(isalnum(c) || c == '.' || c == '_' || c == ':' || c == '-'))
			return false;
	}
	return n >= 1 && n <= LHD_ROLE_NAME_MAX;
}

void
lhd_require_not_null(bool isnull, const char *argname)
{
	if (isnull)
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("%s must not be null", argname)));
}

/* The one error for a portal user id that does not exist (P0002). */
void
lhd_raise_no_user(int64 user_id)
{
	ereport(ERROR,
			(errcode(ERRCODE_NO_DATA_FOUND),
			 errmsg("user " INT64_FORMAT " does not exist", user_id)));
}

/* Returns the snowflake as a palloc'd C string, or raises 22P02. */
char *
lhd_require_snowflake(text *t, const char *what)
{
	char	   *s = text_to_cstring(t);

	if (!lhd_is_snowflake(s))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_TEXT_REPRESENTATION),
				 errmsg("invalid %s: \"%s\"", what, s),
				 errdetail("%s", LHD_SNOWFLAKE_RULE)));
	return s;
}

/* Does s hold a control character (or, with space_too, a space)? */
bool
lhd_has_control_chars(const char *s, bool space_too)
{
	for (const char *p = s; *p; p++)
		if ((unsigned char) *p < ' ' || *p == 0x7f || (space_too && *p == ' '))
			return true;
	return false;
}

/*
 * Split a comma-separated list (lhdiscord.privileged_roles) into palloc'd
 * items with surrounding spaces removed; returns how many.
 */
int
lhd_split_list(const char *list, char ***items)
{
	char	   *copy = pstrdup(list ? list : "");
	char	   *save = NULL;
	int			n = 0;

	*items = palloc(sizeof(char *) * (strlen(copy) / 2 + 2));
	for (char *tok = strtok_r(copy, ",", &save); tok; tok = strtok_r(NULL, ",", &save))
	{
		char	   *end;

		while (*tok == ' ')
			tok++;
		end = tok + strlen(tok);
		while (end > tok && end[-1] == ' ')
			*--end = '\0';
		(*items)[n++] = tok;
	}
	return n;
}

/*
 * Returns the text as a C string after checking its length in characters
 * and that it holds no control characters.
 */
char *
lhd_require_text(text *t, const char *what, int minlen, int maxlen)
{
	char	   *s = text_to_cstring(t);
	int			len = pg_mbstrlen(s);

	if (len > maxlen)
		ereport(ERROR,
				(errcode(ERRCODE_STRING_DATA_RIGHT_TRUNCATION),
				 errmsg("%s is too long", what),
				 errdetail("It has %d characters; at most %d are allowed.", len, maxlen)));
	if (len < minlen)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("%s must not be empty", what)));
	if (lhd_has_control_chars(s, false))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("%s must not contain control characters", what)));
	return s;
}

/* localhost, 127.0.0.0/8 and ::1 */
bool
lhd_is_loopback_host(const char *host, size_t len)
{
	if (len == 9 && pg_strncasecmp(host, "localhost", 9) == 0)
		return true;
	if (len == 3 && strncmp(host, "::1", 3) == 0)
		return true;
	if (len >= 7 && strncmp(host, "127.", 4) == 0)
	{
		/* 127.a.b.c: exactly three more octets of 0-255 */
		int			octets = 1;
		int			digits = 0;
		int			value = 0;

		for (size_t i = 4; i < len; i++)
		{
			if (isdigit((unsigned char) host[i]))
			{
				value = value * 10 + (host[i] - '0');
				if (++digits > 3 || value > 255)
					return false;
			}
			else if (host[i] == '.' && digits > 0)
			{
				octets++;
				digits = 0;
				value = 0;
			}
			else
				return false;
		}
		return octets == 3 && digits > 0;
	}
	return false;
}

/*
 * Call fn(fcinfo); any error it raises is re-thrown with errhidestmt(true),
 * so the calling statement (which may carry a token, an OAuth code or a
 * state as a literal) is not written to the server log by
 * log_min_error_statement.  Bind parameters keep them out of the logged
 * text in the first place; this covers callers that do not use them.
 */
Datum
lhd_call_hiding_statement(PGFunction fn, FunctionCallInfo fcinfo)
{
	MemoryContext oldcxt = CurrentMemoryContext;
	Datum		result = (Datum) 0;

	PG_TRY();
	{
		result = fn(fcinfo);
	}
	PG_CATCH();
	{
		ErrorData  *edata;

		MemoryContextSwitchTo(oldcxt);
		edata = CopyErrorData();
		FlushErrorState();
		edata->hide_stmt = true;
		ReThrowError(edata);
	}
	PG_END_TRY();
	return result;
}
