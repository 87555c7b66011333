#!/usr/bin/env bash
# test/build_check.sh: build lhdiscord warning-free with gcc and with clang.
#
#   bash test/build_check.sh            (any user; needs gcc, clang and
#                                         postgresql-server-dev-15)
#   LHD_BUILD_CC="clang" bash test/build_check.sh    one compiler only
#   LHD_BUILD_LOGS=DIR bash test/build_check.sh      keep the build logs
#
# For each compiler it copies src/*.[ch], the Makefile, the control file and
# sql/ to a scratch directory (the real build tree and its objects are never
# touched) and runs the PGXS build there with -Wall -Wextra -Werror.  It
# prints one line per compiler, "build/gcc ok" or "build/gcc FAILED", followed
# for a failure by every diagnostic of OUR sources (make -k: all files are
# compiled, so the list is complete), and exits non-zero if any build failed.
# Then it checks that sql/lhdiscord--<version>.sql is what
# tools/full_install_script assembles ("build/full-install-script ok").
#
# Flags: the CFLAGS PostgreSQL's configure chose (pg_config --cflags) and the
# Makefile's PG_CFLAGS, minus the options the compiler at hand does not know
# (configure tests each option for its compiler: Debian's were picked for
# gcc, and clang 14 rejects -fexcess-precision=standard,
# -Wimplicit-fallthrough=3, -W[no-]format-truncation,
# -W[no-]stringop-truncation and -Wshadow=compatible-local), then
# -Wall -Wextra -Werror and the few switches below.  with_llvm=no: no bitcode.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
PG_CONFIG=${PG_CONFIG:-/usr/lib/postgresql/15/bin/pg_config}
COMPILERS=${LHD_BUILD_CC:-gcc clang}
JOBS=$(nproc 2>/dev/null || echo 2)

# Warnings PostgreSQL's own headers cause, switched off by name:
# -Wno-unused-parameter (both compilers): static inline functions of the
#     server headers leave parameters unused (lib/ilist.h:440, 450 and 641
#     `head`, storage/bufpage.h:313 `page`), and PG_FUNCTION_ARGS (fmgr.h:193)
#     declares `fcinfo` for V1 functions that take no argument.  Callback
#     signatures fixed by PostgreSQL (GUC hooks, shmem and exit callbacks,
#     bgworker main) leave parameters unused in our code for the same reason;
#     PostgreSQL's own build never enables this warning.
WARN_COMMON="-Wall -Wextra -Werror -Wno-unused-parameter"
# -Wno-ignored-attributes (clang only): Debian's pg_config.h was generated
#     for gcc and defines PG_PRINTF_ATTRIBUTE as gnu_printf, which clang does
#     not know: every pg_attribute_printf() in elog.h, palloc.h, stringinfo.h
#     ... warns "'format' attribute argument not supported: gnu_printf".
#     (PostgreSQL configured with clang uses "printf" there.)
WARN_CLANG="-Wno-ignored-attributes"
WARN_GCC=""

if [ ! -x "$PG_CONFIG" ]; then
	echo "build_check: $PG_CONFIG not found (install postgresql-server-dev-15)" >&2
	exit 2
fi

SCRATCH=$(mktemp -d /tmp/lhdiscord-build-check.XXXXXX)
trap 'rm -rf "$SCRATCH"' EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# The options among "$@" that compiler $1 accepts without a warning.
accepted_flags() {
	local cc=$1 f out=()
	shift
	for f in "$@"; do
		# -Wall: gcc rejects -Wformat-security alone ("ignored without
		# -Wformat").
		if "$cc" -Werror -Wall "$f" -c -x c /dev/null -o /dev/null >/dev/null 2>&1; then
			out+=("$f")
		fi
	done
	echo "${out[*]:-}"
}

status=0
for cc in $COMPILERS; do
	dir=$SCRATCH/$cc
	log=$SCRATCH/$cc.log
	if ! command -v "$cc" >/dev/null 2>&1; then
		echo "build/$cc FAILED ($cc not found)"
		status=1
		continue
	fi
	mkdir -p "$dir/src"
	cp "$ROOT"/src/*.c "$ROOT"/src/*.h "$dir/src/"
	cp -r "$ROOT/Makefile" "$ROOT"/*.control "$ROOT/sql" "$dir/"

	# shellcheck disable=SC2046 # word splitting of the flag lists is wanted
	base=$(accepted_flags "$cc" $("$PG_CONFIG" --cflags))
	pgc=$(make -s --no-print-directory -C "$dir" PG_CONFIG="$PG_CONFIG" \
		--eval='lhd-print-pg-cflags: ; @echo $(PG_CFLAGS)' lhd-print-pg-cflags)
	# shellcheck disable=SC2086
	pgc=$(accepted_flags "$cc" $pgc)
	case "$cc" in
	*clang*) extra=$WARN_CLANG ;;
	*) extra=$WARN_GCC ;;
	esac

	# CFLAGS on the command line replaces configure's; PGXS still appends
	# -fPIC (override) and PG_CFLAGS (passed filtered, replacing the
	# Makefile's).
	if make -k -s -j"$JOBS" -C "$dir" PG_CONFIG="$PG_CONFIG" with_llvm=no \
		CC="$cc" CFLAGS="$base $WARN_COMMON $extra" PG_CFLAGS="$pgc" \
		all >"$log" 2>&1; then
		echo "build/$cc ok"
	else
		echo "build/$cc FAILED"
		status=1
		# Diagnostics of our sources (a header's would name its own path).
		grep -E '^src/[^:]+:[0-9]+(:[0-9]+)?: (warning|error):' "$log" | sort -u -t: -k1,1 -k2,2n | sed 's/^/  /' || true
		grep -qE '^src/[^:]+:[0-9]+' "$log" || sed 's/^/  /' "$log" | tail -n 30
	fi
	echo "  flags: $base $WARN_COMMON $extra $pgc" >"$dir.flags"
	if [ -n "${LHD_BUILD_LOGS:-}" ]; then
		mkdir -p "$LHD_BUILD_LOGS"
		cp "$log" "$dir.flags" "$LHD_BUILD_LOGS/"
	fi
done

# The full install script of the release is what tools/full_install_script
# assembles from the versioned scripts (a change to one of them, or a new
# upgrade script, must be followed by the tool).
if [ -f "$ROOT/tools/full_install_script" ]; then
	if out=$(bash "$ROOT/tools/full_install_script" --check 2>&1); then
		echo "build/full-install-script ok"
	else
		echo "build/full-install-script FAILED"
		echo "  $out"
		status=1
	fi
fi
exit $status
