#!/usr/bin/env bash
# test/package_check.sh: the Debian package (debian/), for test/run's
# "package" phase.  Runs as root: it installs and purges packages.
#
#   bash test/package_check.sh build   DIR   build the .deb(s) in DIR from a
#                                            copy of the tree, check them
#   bash test/package_check.sh install DIR   replace the `make install` copy in
#                                            PostgreSQL $LHD_PG_MAJOR's tree by
#                                            the .deb built for it
#   bash test/package_check.sh restore DIR   purge the package, `make install`
#                                            again (safe to run at any point,
#                                            and more than once)
#
# test/run runs pg_regress between install and restore.  Every check prints
# one line, "package/<check> ok" or "package/<check> FAILED <why>", which
# test/run counts; the exit status is non-zero when a check failed.  DIR is
# the caller's scratch directory (dpkg-buildpackage writes its products next
# to the source directory, so the copy lives in DIR/lhdiscord-<version>/ and
# nothing is written to the tree itself).  The build neither runs the test
# suite (debian/rules) nor needs the network.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
. "$ROOT/test/lib.sh"

step=${1:-}
DIR=${2:-}
case "$step" in build | install | restore) ;; *) echo "usage: $0 build|install|restore DIR" >&2; exit 2 ;; esac
[ -d "$DIR" ] || { echo "$0: $DIR is not a directory" >&2; exit 2; }
[ "$(id -u)" -eq 0 ] || { echo "$0: must run as root (dpkg)" >&2; exit 2; }

status=0
ok() { echo "package/$1 ok"; }
bad() { echo "package/$1 FAILED $2"; status=1; }

VERSION=$(dpkg-parsechangelog -l "$ROOT/debian/changelog" -S Version)
UPSTREAM=${VERSION%-*}
ARCH=$(dpkg --print-architecture)
SRC=$DIR/lhdiscord-$UPSTREAM
PKG=postgresql-$LHD_PG_MAJOR-lhdiscord
PGC=$LHD_PG_BIN/pg_config

deb_of() { echo "$DIR/postgresql-$1-lhdiscord_${VERSION}_$ARCH.deb"; }

# Whether dpkg knows the package as anything but not-installed (installed,
# half-installed, config-files...).
pkg_present() {
	local st
	st=$(dpkg-query -W -f='${db:Status-Status}' "$PKG" 2>/dev/null || true)
	[ -n "$st" ] && [ "$st" != not-installed ]
}

# The install scripts of the tree, by name: what every package must carry.
sql_scripts() { (cd "$ROOT/sql" && ls lhdiscord--*.sql | sort); }

# The files `make install` and the package put into PostgreSQL $1's tree
# (the bitcode, when the server is built with LLVM, goes with them).
installed_paths() { # installed_paths PG_CONFIG
	local lib share f
	lib=$("$1" --pkglibdir)
	share=$("$1" --sharedir)/extension
	echo "$lib/lhdiscord.so"
	echo "$share/lhdiscord.control"
	for f in $(sql_scripts); do echo "$share/$f"; done
}

# lhdiscord files left in PostgreSQL's tree (whoever put them there).
leftovers() { # leftovers PG_CONFIG
	local lib share
	lib=$("$1" --pkglibdir)
	share=$("$1" --sharedir)/extension
	find "$lib" -maxdepth 1 -name 'lhdiscord*' ! -type d
	find "$share" -maxdepth 1 -name 'lhdiscord*'
	[ -d "$lib/bitcode" ] && find "$lib/bitcode" -path '*lhdiscord*' ! -type d
	return 0
}

# The PostgreSQL major version an extension library was built for, read from
# its PG_MODULE_MAGIC block, the one the server itself compares when it
# loads the library: Pg_magic_func returns the address of a static struct
# whose second int is PG_VERSION_NUM / 100.  x86-64 code only (the address
# comes from the function's `lea ...(%rip)`); prints nothing elsewhere.
magic_major() { # magic_major LIBRARY
	local addr stop hex
	addr=$(objdump -d --disassemble=Pg_magic_func "$1" 2>/dev/null |
		sed -nE 's/.*lea +[^#]*\(%rip\),%rax +# *([0-9a-f]+).*/\1/p' || true)
	addr=${addr%%$'\n'*}
	[ -n "$addr" ] || return 0
	stop=$(printf '0x%x' $((0x$addr + 8)))
	hex=$(objdump -s --start-address="0x$addr" --stop-address="$stop" "$1" 2>/dev/null |
		sed -nE 's/^ [0-9a-f]+ [0-9a-f]{8} ([0-9a-f]{8}).*/\1/p' || true)
	hex=${hex%%$'\n'*}
	[ ${#hex} -eq 8 ] || return 0
	echo $((0x${hex:6:2}${hex:4:2}${hex:2:2}${hex:0:2} / 100))
}

#
# build: copy the tree, bring debian/control up to date, dpkg-buildpackage
# -b, then per version: built against that version, and holds what it must.
#
do_build() {
	local v versions committed log="$DIR/build.log" rc pgc major magic inc others deb list exp f path
	local lib share dep problems compiles nodeps

	# The package's version is the release's.
	if [ "$UPSTREAM" = "$(sed -nE "s/^default_version *= *'([^']*)'.*/\1/p" "$ROOT/lhdiscord.control")" ]; then
		ok version
	else
		bad version "debian/changelog says $VERSION, lhdiscord.control's default_version differs"
	fi

	# A copy without build products, VCS data or test output.
	rm -rf "$SRC"
	mkdir -p "$SRC"
	tar -C "$ROOT" --exclude=./.git --exclude='*.o' --exclude='*.bc' --exclude='*.so' \
		--exclude=./test/results --exclude=tmp_check --exclude=output_iso \
		--exclude=./regression.diffs --exclude=./regression.out -cf - . | tar -C "$SRC" -xf -

	# debian/control as committed is what pg_buildext generates for Debian
	# 12 (PostgreSQL 15); on any other release the build regenerates it for
	# that release's versions, as `pg_buildext updatecontrol` is documented
	# to be run (docs/packaging.md).
	committed=$DIR/control.committed
	cp "$SRC/debian/control" "$committed"
	if (cd "$SRC" && PG_SUPPORTED_VERSIONS=15 pg_buildext updatecontrol) &&
		cmp -s "$committed" "$SRC/debian/control"; then
		ok control
	else
		bad control "debian/control is not what 'PG_SUPPORTED_VERSIONS=15 pg_buildext updatecontrol' writes from debian/control.in"
		diff -u "$committed" "$SRC/debian/control" || true
	fi
	(cd "$SRC" && pg_buildext updatecontrol)
	versions=$(cd "$SRC" && pg_buildext supported-versions)
	echo "PostgreSQL versions this release builds for: $(echo $versions)"
	if grep -qx "$LHD_PG_MAJOR" <<<"$versions"; then
		ok versions
	else
		bad versions "pg_buildext supported-versions ($(echo $versions)) lacks $LHD_PG_MAJOR"
	fi

	# The declared Build-Depends must be installed.  dpkg also requires the
	# build-essential meta package, which test/lib.sh's lists do not name
	# (they name the compilers and make): without it, check the declared
	# ones alone (-I) and build with -d.
	if (cd "$SRC" && dpkg-checkbuilddeps -I); then
		ok build-depends
	else
		bad build-depends "dpkg-checkbuilddeps: see above"
	fi
	nodeps=()
	if [ "$(dpkg-query -W -f='${db:Status-Status}' build-essential 2>/dev/null || true)" != installed ]; then
		echo "build-essential is not installed: dpkg-buildpackage -d"
		nodeps=(-d)
	fi

	set +e
	(cd "$SRC" && dpkg-buildpackage -us -uc -b "${nodeps[@]}") >"$log" 2>&1
	rc=$?
	set -e
	if [ $rc -ne 0 ]; then
		tail -n 60 "$log"
		bad build "dpkg-buildpackage -us -uc -b exited with status $rc"
		return
	fi
	for v in $versions; do
		[ -f "$(deb_of "$v")" ] || { bad build "no $(basename "$(deb_of "$v")")"; ls -l "$DIR"; return; }
	done
	ok build

	for v in $versions; do
		deb=$(deb_of "$v")
		pgc=/usr/lib/postgresql/$v/bin/pg_config

		# Built against version v: every compiler call of this version's
		# pass of the build (pg_buildext loop) reads v's server headers and
		# no other version's, and the library's magic block says v, as does
		# that version's pg_config.
		major=$("$pgc" --version | sed -nE 's/^PostgreSQL ([0-9]+).*/\1/p')
		inc=$("$pgc" --includedir-server)
		compiles=$(sed -n "/^### PostgreSQL $v loop ###/,/^### End $v loop/p" "$log" | grep -E ' -c ' || true)
		others=$(grep -oE '/usr/include/postgresql/[0-9]+/server' <<<"$compiles" | sort -u | grep -vx "$inc" || true)
		rm -rf "$DIR/x-$v"
		dpkg-deb -x "$deb" "$DIR/x-$v"
		magic=$(magic_major "$DIR/x-$v$("$pgc" --pkglibdir)/lhdiscord.so")
		if [ "$major" != "$v" ]; then
			bad "built-for-pg$v" "$pgc --version says $major"
		elif ! grep -qF -- "-I$inc " <<<"$compiles"; then
			bad "built-for-pg$v" "no compiler call of the $v pass reads $inc"
		elif [ -n "$others" ]; then
			bad "built-for-pg$v" "the $v pass reads $(echo $others)"
		elif [ "$ARCH" = amd64 ] && [ "$magic" != "$v" ]; then
			bad "built-for-pg$v" "lhdiscord.so's PG_MODULE_MAGIC says '${magic:-unreadable}', not $v"
		else
			ok "built-for-pg$v"
			echo "  pg_config: PostgreSQL $major, headers $inc, PG_MODULE_MAGIC of lhdiscord.so: ${magic:-not read on $ARCH}"
		fi

		# What the package holds: the library, the control file and every
		# install script of the tree in version v's directories, the
		# bitcode and the documentation; nothing else (no test files, no
		# other version's files).  Its Depends name v's server and the
		# libraries the module links.
		list=$(dpkg-deb -c "$deb" | awk '{ print $6 }' | sed 's,^\./,/,' | grep -v '/$' || true)
		exp=$(installed_paths "$pgc" | sort)
		problems=""
		lib=$("$pgc" --pkglibdir)
		share=$("$pgc" --sharedir)/extension
		for path in $exp; do
			grep -qxF "$path" <<<"$list" || problems+=" missing:$path"
		done
		for path in $list; do
			case "$path" in
			"$lib/lhdiscord.so" | "$lib/bitcode/lhdiscord.index.bc" | "$lib"/bitcode/lhdiscord/src/*.bc) ;;
			"$share/lhdiscord.control") ;;
			"$share"/lhdiscord--*.sql) grep -qxF "$path" <<<"$exp" || problems+=" not-in-tree:$path" ;;
			/usr/share/doc/postgresql-$v-lhdiscord/*) ;;
			*) problems+=" unexpected:$path" ;;
			esac
		done
		f=$(dpkg-deb -f "$deb" Depends)
		for dep in "postgresql-$v" 'libcurl4(t64)?' libjansson4 'libssl3(t64)?' 'libwebsockets[0-9]+(t64)?'; do
			grep -qE "(^|, )$dep( |,|$)" <<<"$f" || problems+=" no-Depends-on:$dep"
		done
		if [ -z "$problems" ]; then
			ok "contents-pg$v"
			echo "  $(grep -c . <<<"$list") files; Depends: $f"
		else
			bad "contents-pg$v" "${problems# }"
			dpkg-deb -c "$deb"
		fi
	done
}

#
# install: `make uninstall` (and check that it took everything away), then
# dpkg -i the .deb of $LHD_PG_MAJOR; the package owns every file of the
# extension, as the .deb shipped them.
#
do_install() {
	local deb left path owner owned verify problems=""
	deb=$(deb_of "$LHD_PG_MAJOR")
	[ -f "$deb" ] || { bad install "no $(basename "$deb") (did the build step pass?)"; return; }

	# A run cut short before its restore step leaves the package behind.
	if pkg_present; then
		echo "purging $PKG left by an earlier run"
		dpkg -P "$PKG" >/dev/null
	fi

	make -C "$ROOT" -s PG_CONFIG="$PGC" uninstall >/dev/null
	left=$(leftovers "$PGC")
	if [ -z "$left" ]; then
		ok uninstall-make
	else
		bad uninstall-make "still in PostgreSQL's tree: $(echo $left)"
	fi

	if dpkg -i "$deb"; then
		ok install
	else
		bad install "dpkg -i $(basename "$deb") failed"
		return
	fi

	# Owned by the package (dpkg -L, dpkg -S), and as shipped (dpkg --verify
	# compares them with the package's md5sums; only PostgreSQL's tree
	# counts: a system may leave out /usr/share/doc with dpkg's path-exclude,
	# as the CI chroots do).
	owned=$(dpkg -L "$PKG")
	for path in $(installed_paths "$PGC"); do
		[ -f "$path" ] || { problems+=" absent:$path"; continue; }
		grep -qxF "$path" <<<"$owned" || problems+=" not-in-dpkg-L:$path"
		owner=$(dpkg -S "$path" 2>/dev/null | sed 's/: .*//' || true)
		[ "$owner" = "$PKG" ] || problems+=" owner-of-$path:${owner:-none}"
	done
	dpkg --verify "$PKG" >"$DIR/verify.log" 2>&1 || true
	verify=$(grep -F -e " $("$PGC" --pkglibdir)/" -e " $("$PGC" --sharedir)/" "$DIR/verify.log" || true)
	[ -z "$verify" ] || problems+=" dpkg-verify:$(echo $verify)"
	if [ -z "$problems" ]; then
		ok files
	else
		bad files "${problems# }"
	fi
}

#
# restore: purge the package (its files gone with it) and `make install`
# again, leaving PostgreSQL's tree as test/run had it.
#
do_restore() {
	local left path missing=""
	if pkg_present; then
		if dpkg -P "$PKG" >/dev/null; then
			left=$(leftovers "$PGC")
			if [ -z "$left" ]; then ok purge; else bad purge "left behind: $(echo $left)"; fi
		else
			bad purge "dpkg -P $PKG failed"
		fi
	fi
	lhd_build_install "$ROOT"
	for path in $(installed_paths "$PGC"); do
		[ -f "$path" ] || missing+=" $path"
	done
	if [ -z "$missing" ]; then ok restore; else bad restore "make install did not put back:$missing"; fi
}

case "$step" in
build) do_build ;;
install) do_install ;;
restore) do_restore ;;
esac
exit $status
