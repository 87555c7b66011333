/*-------------------------------------------------------------------------
 *
 * lhd_compat.h
 *	  Differences between the PostgreSQL major versions lhdiscord builds on.
 *
 * lhdiscord supports PostgreSQL 15, 17 and 18 (the versions Debian ships;
 * 16 follows from the same guards but is not tested).  Every
 * PG_VERSION_NUM test of the project lives in this header, so that the rest
 * of the code is written once against the names defined here.
 *
 *-------------------------------------------------------------------------
 */
#ifndef LHD_COMPAT_H
#define LHD_COMPAT_H

#include "postgres.h"

#include "utils/guc.h"

#if PG_VERSION_NUM < 150000
#error "lhdiscord requires PostgreSQL 15 or later"
#endif

/*
 * Memory of string GUC values and of a setting's "extra".
 *
 * Up to PostgreSQL 15 guc.c frees them with free(), so a check hook must
 * allocate them with malloc().  From 16 on they live in GUCMemoryContext:
 * they must come from guc_malloc()/guc_strdup() and be released with
 * guc_free(); free() on them aborts the process.  At elevel LOG these return
 * NULL when out of memory, like malloc(), so a check hook can report the
 * failure itself.  lhd_guc_free(NULL) is a no-op on every version.
 */
#if PG_VERSION_NUM >= 160000
#define lhd_guc_malloc(size)	guc_malloc(LOG, (size))
#define lhd_guc_strdup(str)		guc_strdup(LOG, (str))
#define lhd_guc_free(ptr)		guc_free(ptr)
#else
#define lhd_guc_malloc(size)	malloc(size)
#define lhd_guc_strdup(str)		strdup(str)
#define lhd_guc_free(ptr)		free(ptr)
#endif

/*
 * A function that never returns.  PostgreSQL 18 removed
 * pg_attribute_noreturn(), written after the declarator, in favour of the
 * pg_noreturn specifier written before the declaration; on earlier versions
 * the GCC/Clang attribute is valid in that position too.
 *
 * Usage: extern pg_noreturn void f(void);
 */
#if PG_VERSION_NUM < 180000
#define pg_noreturn pg_attribute_noreturn()
#endif

#endif							/* LHD_COMPAT_H */
