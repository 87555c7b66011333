# test/lib.sh: shared helpers for test/run, test/demo and test/bench/run.
#
# Sourced, not executed.  Everything that needs PostgreSQL runs as the
# `postgres` OS user (PostgreSQL refuses to run as root) on clusters under a
# throwaway directory that user owns; servers listen on Unix sockets in that
# directory or on 127.0.0.1 only.  Every wait is bounded and lhd_cleanup
# stops whatever was started.

# The PostgreSQL major version to build and test against: LHD_PG_MAJOR, else
# the newest one installed (/usr/lib/postgresql/N), else the one this Debian
# release ships (12 bookworm: 15, 13 trixie: 17, unstable: 18), else 15.
if [ -z "${LHD_PG_MAJOR:-}" ]; then
	LHD_PG_MAJOR=$(ls /usr/lib/postgresql 2>/dev/null | grep -E '^[0-9]+$' | sort -n |
		while read -r v; do [ -x "/usr/lib/postgresql/$v/bin/postgres" ] && echo "$v"; done | tail -n 1)
	if [ -z "$LHD_PG_MAJOR" ]; then
		case "$(. /etc/os-release 2>/dev/null; echo "${VERSION_CODENAME:-}")" in
		trixie) LHD_PG_MAJOR=17 ;;
		forky | sid) LHD_PG_MAJOR=18 ;;
		*) LHD_PG_MAJOR=15 ;;
		esac
	fi
fi
case "$LHD_PG_MAJOR" in
'' | *[!0-9]*) echo "LHD_PG_MAJOR must be a PostgreSQL major version such as 15, not '$LHD_PG_MAJOR'" >&2; return 2 ;;
esac
export LHD_PG_MAJOR
LHD_PG_BIN=/usr/lib/postgresql/$LHD_PG_MAJOR/bin
LHD_PGXS=/usr/lib/postgresql/$LHD_PG_MAJOR/lib/pgxs
LHD_PACKAGES="postgresql-$LHD_PG_MAJOR postgresql-server-dev-$LHD_PG_MAJOR libcurl4-openssl-dev libjansson-dev libssl-dev libwebsockets-dev libipc-run-perl python3 make gcc clang wrk"
# What only the suite (test/run) needs on top: the PHP portal client's test,
# the mock's Gateway (WebSocket) endpoint,
# the Prometheus exporter the metrics test scrapes, and the Debian packaging
# tools the package phase builds the .deb with.
LHD_SUITE_PACKAGES="build-essential php-cli php-pgsql prometheus-postgres-exporter python3-websockets debhelper dpkg-dev fakeroot postgresql-server-dev-all"
LHD_TEST_KEY=000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f

lhd_log() { printf '==> [%(%H:%M:%S)T] %s\n' -1 "$*" >&2; }

# Run a command as the postgres OS user (or directly when already postgres).
lhd_as_pg() {
	if [ "$(id -un)" = postgres ]; then
		"$@"
	else
		runuser -u postgres -- "$@"
	fi
}

# Install the Debian packages the project needs, if any is missing:
# LHD_PACKAGES, and the packages named as arguments (test/run: the suite's).
lhd_install_packages() {
	local missing=() want="$LHD_PACKAGES $*"
	for p in $want; do
		dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
	done
	if [ ${#missing[@]} -gt 0 ] || [ "${LHD_FORCE_APT:-0}" = 1 ]; then
		if [ "$(id -u)" -ne 0 ]; then
			echo "missing packages: ${missing[*]} (run as root or install them)" >&2
			return 1
		fi
		lhd_log "installing packages: ${missing[*]:-all}"
		DEBIAN_FRONTEND=noninteractive apt-get update -qq
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $want >/dev/null
		# The exporter's package starts its own service where systemd runs
		# (on all interfaces, as the postgres user): the tests start their
		# own exporter on loopback, so the packaged one is switched off.
		if [ -d /run/systemd/system ] && systemctl is-enabled --quiet prometheus-postgres-exporter 2>/dev/null; then
			systemctl disable --now prometheus-postgres-exporter >/dev/null 2>&1 || true
		fi
	fi
}

# Build and install the extension into the tree of PostgreSQL $LHD_PG_MAJOR.
lhd_build_install() {
	local root=$1
	lhd_log "building lhdiscord"
	make -C "$root" -s PG_CONFIG=$LHD_PG_BIN/pg_config >/dev/null
	make -C "$root" -s PG_CONFIG=$LHD_PG_BIN/pg_config install >/dev/null
}

# A scratch directory owned by postgres with a copy of what the tests read.
lhd_make_workdir() {
	local root=$1 work
	work=$(mktemp -d /tmp/lhdiscord-test.XXXXXX)
	cp -r "$root/sql" "$root/expected" "$root/test" "$root/examples" "$work/"
	# What test/t/240_meta_json.pl checks META.json against.
	(cd "$root" && cp --parents META.json lhdiscord.control src/lhdiscord.h "$work/")
	chown -R postgres: "$work"
	chmod 700 "$work"
	echo "$work"
}

# A free TCP port on 127.0.0.1.
lhd_free_port() {
	python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'
}

# lhd_cluster_init DATADIR PORT SOCKETDIR [extra postgresql.conf lines...]
lhd_cluster_init() {
	local data=$1 port=$2 sock=$3
	shift 3
	lhd_as_pg $LHD_PG_BIN/initdb -D "$data" -U postgres --auth=trust --no-locale -E UTF8 >/dev/null
	{
		echo "port = $port"
		echo "listen_addresses = '127.0.0.1'"
		echo "unix_socket_directories = '$sock'"
		echo "shared_preload_libraries = 'lhdiscord'"
		echo "fsync = off"
		echo "max_worker_processes = 16"
		echo "log_line_prefix = '%m [%p] %b '"
		for line in "$@"; do echo "$line"; done
	} | lhd_as_pg tee -a "$data/postgresql.conf" >/dev/null
}

lhd_cluster_start() {
	local data=$1
	lhd_as_pg $LHD_PG_BIN/pg_ctl -D "$data" -l "$data/server.log" -w -t 60 start >/dev/null
	LHD_CLUSTERS+=("$data")
}

lhd_cluster_stop() {
	local data=$1
	[ -f "$data/postmaster.pid" ] && lhd_as_pg $LHD_PG_BIN/pg_ctl -D "$data" -m fast -w -t 60 stop >/dev/null 2>&1 || true
}

# lhd_psql SOCKETDIR PORT DB [psql args...]
lhd_psql() {
	local sock=$1 port=$2 db=$3
	shift 3
	lhd_as_pg $LHD_PG_BIN/psql -X -q -v ON_ERROR_STOP=1 -h "$sock" -p "$port" -d "$db" "$@"
}

# Start the mock Discord server; sets LHD_MOCK_PORT and LHD_MOCK_PID.
lhd_mock_start() {
	local work=$1 token=$2
	local pf="$work/mock.port"
	local cmd=(python3 "$work/test/mock_discord/mock_discord.py" --host 127.0.0.1 --port 0
		--port-file "$pf" --bot-token "$token" --client-id 123456789012345678
		--client-secret "${LHD_CLIENT_SECRET:-mock-client-secret}" --log "$work/mock.log")
	# LHD_MOCK_GATEWAY=1: also its Gateway; the port goes to LHD_MOCK_GATEWAY_PORT.
	[ "${LHD_MOCK_GATEWAY:-0}" = 1 ] && cmd+=(--gateway-port 0 --gateway-port-file "$work/mock.gwport")
	rm -f "$pf" "$work/mock.gwport"
	# Background the command itself (not a shell function), so that $! is the
	# process that receives our SIGTERM: runuser passes it on to the mock.
	if [ "$(id -un)" = postgres ]; then
		"${cmd[@]}" >"$work/mock.stderr" 2>&1 &
	else
		runuser -u postgres -- "${cmd[@]}" >"$work/mock.stderr" 2>&1 &
	fi
	LHD_MOCK_PID=$!
	LHD_PIDS+=("$LHD_MOCK_PID")
	for _ in $(seq 1 100); do
		[ -s "$pf" ] && break
		sleep 0.1
	done
	[ -s "$pf" ] || { cat "$work/mock.stderr" >&2; echo "mock Discord server did not start" >&2; return 1; }
	LHD_MOCK_PORT=$(cat "$pf")
	if [ "${LHD_MOCK_GATEWAY:-0}" = 1 ]; then LHD_MOCK_GATEWAY_PORT=$(cat "$work/mock.gwport"); fi
}

LHD_CLUSTERS=()
LHD_PIDS=()

# Install lhd_cleanup for every way the script can end: bash runs the EXIT
# trap on exit and on INT/TERM only if those are trapped too (e.g. `timeout`).
lhd_trap_cleanup() {
	trap lhd_cleanup EXIT
	trap 'exit 130' INT
	trap 'exit 143' TERM
}

# Stop every server this script started; remove the scratch dir unless kept.
lhd_cleanup() {
	local d p
	for d in "${LHD_CLUSTERS[@]}"; do lhd_cluster_stop "$d"; done
	for p in "${LHD_PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
	# Bounded wait for them to go.
	for p in "${LHD_PIDS[@]}"; do
		for _ in $(seq 1 50); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
	done
	if [ -n "${LHD_WORK:-}" ] && [ -d "$LHD_WORK" ] && [ "${LHD_KEEP:-0}" != 1 ]; then
		rm -rf "$LHD_WORK"
	fi
}
