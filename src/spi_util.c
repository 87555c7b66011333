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
#include "utils/guc.h"
#include "utils/json.h"

#include "lhdiscord.h"

/*
 * For C functions that run SPI in the caller's session without SECURITY
 * DEFINER (drain_outbox, prune_outbox: run by a superuser): search only
 * pg_catalog and pg_temp until lhd_unpin_search_path, as a function's
 * SET search_path clause would, so that an operator or function planted in
 * a schema the application owns can never match the extension's SQL.  An
 * ERROR restores the caller's setting with the (sub)transaction.
 */
int
lhd_pin_search_path(void)
{
	int			nestlevel = NewGUCNestLevel();

	(void) set_config_option("search_path", "pg_catalog, pg_temp",
							 PGC_USERSET, PGC_S_SESSION, GUC_ACTION_SAVE, true, 0, false);
	return nestlevel;
}

void
lhd_unpin_search_path(int nestlevel)
{
	AtEOXact_GUC(true, nestlevel);
}

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
