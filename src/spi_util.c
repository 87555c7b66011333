/*-------------------------------------------------------------------------
 *
 * spi_util.c
 *	  Kept SPI plans and small result/JSON helpers.
 *
 * Owns the per-backend cache of prepared statements (LhdPlan) used by the
 * triggers, the account functions and the worker, so that hot paths never
 * re-parse or re-plan SQL, and the helpers that build the small JSON texts
 * stored in audit rows.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "catalog/pg_type.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/json.h"

#include "lhdiscord.h"

SPIPlanPtr
lhd_plan(LhdPlan *p)
{
	if (p->plan == NULL)
	{
		SPIPlanPtr	plan = SPI_prepare_cursor(p->sql, p->nargs, p->argtypes, p->options);

		if (plan == NULL)
			elog(ERROR, "lhdiscord: SPI_prepare failed (%s) for: %s",
				 SPI_result_code_string(SPI_result), p->sql);
		if (SPI_keepplan(plan) != 0)
			elog(ERROR, "lhdiscord: SPI_keepplan failed");
		p->plan = plan;
	}
	return p->plan;
}

/*
 * Execute a kept plan; raises on SPI failure and returns SPI_processed.
 * nulls follows SPI conventions (' ' not null, 'n' null) and may be NULL.
 * The caller's memory context stays current (SPI would leave its procedure
 * context current, defeating a caller's short-lived context).
 */
int
lhd_exec(LhdPlan *p, Datum *values, const char *nulls, bool read_only, long count)
{
	MemoryContext caller = CurrentMemoryContext;
	int			rc = SPI_execute_plan(lhd_plan(p), values, nulls, read_only, count);

	MemoryContextSwitchTo(caller);
	if (rc < 0)
		elog(ERROR, "lhdiscord: SPI_execute_plan failed (%s) for: %s",
			 SPI_result_code_string(rc), p->sql);
	return (int) SPI_processed;
}

Datum
lhd_getattr(int row, int col, bool *isnull)
{
	return SPI_getbinval(SPI_tuptable->vals[row], SPI_tuptable->tupdesc,
						 col, isnull);
}

/* Text output of a column, or NULL; palloc'd in the current context. */
char *
lhd_getattr_text(int row, int col)
{
	return SPI_getvalue(SPI_tuptable->vals[row], SPI_tuptable->tupdesc, col);
}

/* A text[] Datum of n C strings, in the current memory context. */
Datum
lhd_text_array(char **items, int n)
{
	Datum	   *elems = palloc(sizeof(Datum) * (n + 1));

	for (int i = 0; i < n; i++)
		elems[i] = CStringGetTextDatum(items[i]);
	return PointerGetDatum(construct_array_builtin(elems, n, TEXTOID));
}

/* Append a JSON array of n strings. */
void
lhd_json_append_array(StringInfo buf, char **items, int n)
{
	appendStringInfoChar(buf, '[');
	for (int i = 0; i < n; i++)
	{
		if (i > 0)
			appendStringInfoString(buf, ", ");
		escape_json(buf, items[i]);
	}
	appendStringInfoChar(buf, ']');
}

/* Append "key": "value" (value JSON-escaped, NULL becomes null). */
void
lhd_json_append_str(StringInfo buf, const char *key, const char *val, bool *first)
{
	if (!*first)
		appendStringInfoString(buf, ", ");
	*first = false;
	escape_json(buf, key);
	appendStringInfoString(buf, ": ");
	if (val == NULL)
		appendStringInfoString(buf, "null");
	else
		escape_json(buf, val);
}

/* Append "key": <raw JSON> (raw must already be valid JSON). */
void
lhd_json_append_raw(StringInfo buf, const char *key, const char *raw, bool *first)
{
	if (!*first)
		appendStringInfoString(buf, ", ");
	*first = false;
	escape_json(buf, key);
	appendStringInfoString(buf, ": ");
	appendStringInfoString(buf, raw ? raw : "null");
}
