#!/usr/bin/python3
"""
bench.py - lhdiscord's benchmark figures (called by test/bench/run, which
starts the cluster and the mock Discord server and cleans up afterwards).

Python 3 standard library only.  Every database access goes through the
psql, pgbench and wrk binaries run as the postgres OS user; long-lived psql
processes ("sessions") are driven over pipes so a figure can time single
statements, learn its backend's pid and poll without spawning processes.
Every wait is bounded and fails with a message saying what it waited for.

Figures (BENCHMARKS.md has the definitions and the measured values):
  1  trigger overhead        pgbench TPS with lhdiscord's triggers / without
  2  calls per change        lhdiscord's Discord calls / the seed algorithm's
  3a drain throughput        worker calls/s / wrk req/s on the same mock route
  3b commit-to-request       latency of a single change, worker idle
  4  rate-limit utilisation  achieved calls/s / the allowed 50/s, 429 share
  5  reconcile at scale      per-user PL/pgSQL loop time / reconcile() time
  6  member scan             plain HTTP client time / lhdiscord scan time
  7  brig under a backlog    brig-strip latency p99 under a 100,000-job bulk
                             backlog at 50/s / the same brig, queue empty;
                             utilisation of the limit, max per 1 s window
"""

import argparse
import json
import math
import os
import pwd
import random
import re
import select
import shutil
import signal
import subprocess
import sys
import threading
import time
import traceback
import urllib.error
import urllib.request

# The PostgreSQL binaries: test/bench/run passes LHD_PG_BIN (test/lib.sh's,
# for LHD_PG_MAJOR); run by hand, LHD_PG_MAJOR or 15.
PG_BIN = os.environ.get("LHD_PG_BIN") or \
    "/usr/lib/postgresql/%s/bin" % os.environ.get("LHD_PG_MAJOR", "15")

# Discord ids used throughout: user i's Discord account is USER_BASE + i;
# role ids as in sql/include/roles_setup.sql.
USER_BASE = 300000000000000000
ROLE_IDS = {
    "traveler": "900000000000000101", "resident": "900000000000000102",
    "citizen": "900000000000000103", "verified": "900000000000000104",
    "staff_command": "900000000000000111", "staff_chaplain": "900000000000000112",
    "staff_engineer": "900000000000000113", "staff_quartermaster": "900000000000000114",
    "staff_steward": "900000000000000115",
    "rank_jr_crew": "900000000000000121", "rank_crew_member": "900000000000000122",
    "rank_officer": "900000000000000123",
}
ENTITLEMENT_ROLE = "900000000000000131"     # role_map key hauling.member
ROLE_BUCKET = "PUT /guilds/{guild_id}/members/{user_id}/roles/{role_id}"

LEVELS = ("traveler", "resident", "citizen")
DEPARTMENTS = ("command", "chaplain", "engineer", "quartermaster", "steward")
RANKS = ("jr_crew", "crew_member", "officer")


class BenchError(Exception):
    """A figure could not be measured (the run fails)."""


def log(msg):
    print("==> " + msg, file=sys.stderr, flush=True)


def out(msg=""):
    print(msg, flush=True)


def postgres_uid():
    return pwd.getpwnam("postgres").pw_uid


def as_pg(cmd):
    """Run cmd as the postgres OS user (PostgreSQL refuses root)."""
    if os.geteuid() == postgres_uid():
        return cmd
    return ["runuser", "-u", "postgres", "--"] + cmd


def chown_pg(path):
    if os.geteuid() == 0:
        pw = pwd.getpwnam("postgres")
        os.chown(path, pw.pw_uid, pw.pw_gid)


def wait_until(cond, timeout, what, interval=0.05):
    """Poll cond() until it returns a true value; fail after timeout s."""
    deadline = time.monotonic() + timeout
    while True:
        value = cond()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise BenchError("timed out after %.0f s waiting for %s" % (timeout, what))
        time.sleep(interval)


def percentile(values, p):
    """Nearest-rank percentile of a non-empty list."""
    s = sorted(values)
    k = max(0, min(len(s) - 1, int(math.ceil(p / 100.0 * len(s))) - 1))
    return s[k]


def sql_literal(value):
    return "'" + str(value).replace("'", "''") + "'"


# --------------------------------------------------------------------------
# psql sessions
# --------------------------------------------------------------------------

MESSAGE_RE = re.compile(r"^(psql:[^:]*:\d+: )?(ERROR|FATAL|PANIC|WARNING|NOTICE|INFO|LOG|"
                        r"DETAIL|HINT|CONTEXT|STATEMENT|DEBUG\d?):")


class Session:
    """One psql process kept open over pipes: one backend, one session.
    query() sends SQL followed by an \\echo marker and reads the unaligned,
    tuples-only output up to the marker, within a deadline."""

    def __init__(self, bench, db, appname="lhd-bench"):
        self.bench = bench
        self.db = db
        conninfo = "host=%s port=%s dbname=%s application_name=%s" % (
            bench.socket, bench.port, db, appname)
        self.proc = subprocess.Popen(
            as_pg([PG_BIN + "/psql", "-X", "-A", "-t", "-q", "-v", "VERBOSITY=terse",
                   "-d", conninfo]),
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        self.buf = b""
        self.seq = 0
        self.messages = []
        self.pid = int(self.scalar("SELECT pg_backend_pid()", timeout=30))

    def query(self, sql, timeout=120):
        """Run sql (one or more statements); return the output rows as lists
        of strings.  Server errors raise BenchError; warnings are kept."""
        if self.proc.poll() is not None:
            raise BenchError("psql session on %s has ended" % self.db)
        self.seq += 1
        marker = "__LHD_BENCH_%d__" % self.seq
        text = sql.strip()
        if not text.endswith(";"):
            text += ";"
        self.proc.stdin.write((text + "\n\\echo " + marker + "\n").encode())
        self.proc.stdin.flush()
        lines = self._read_until(marker, timeout, sql)
        rows, errors = [], []
        for line in lines:
            m = MESSAGE_RE.match(line)
            if m:
                (errors if m.group(2) in ("ERROR", "FATAL", "PANIC") else self.messages).append(line)
            else:
                rows.append(line.split("|"))
        if errors:
            raise BenchError("SQL failed on %s: %s\n  in: %s" % (self.db, "; ".join(errors), sql.strip()[:300]))
        return rows

    def _read_until(self, marker, timeout, sql):
        deadline = time.monotonic() + timeout
        fd = self.proc.stdout.fileno()
        want = marker.encode()
        while True:
            idx = self.buf.find(want + b"\n")
            if idx >= 0 and (idx == 0 or self.buf[idx - 1:idx] == b"\n"):
                data = self.buf[:idx]
                self.buf = self.buf[idx + len(want) + 1:]
                return data.decode("utf-8", "replace").splitlines()
            left = deadline - time.monotonic()
            if left <= 0:
                self.kill()
                raise BenchError("timed out after %d s running on %s: %s" % (timeout, self.db, sql.strip()[:200]))
            ready, _, _ = select.select([fd], [], [], min(left, 1.0))
            if ready:
                chunk = os.read(fd, 65536)
                if not chunk:
                    raise BenchError("psql on %s exited: %s" % (self.db, self.buf.decode(errors="replace")[-2000:]))
                self.buf += chunk

    def scalar(self, sql, timeout=120):
        rows = self.query(sql, timeout)
        if not rows:
            raise BenchError("no row from: %s" % sql)
        return rows[-1][0]

    def close(self):
        if self.proc.poll() is None:
            try:
                self.proc.stdin.write(b"\\q\n")
                self.proc.stdin.flush()
                self.proc.stdin.close()
                self.proc.wait(timeout=10)
            except (OSError, subprocess.TimeoutExpired):
                self.kill()

    def kill(self):
        if self.proc.poll() is None:
            self.proc.kill()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass


# --------------------------------------------------------------------------
# /proc helpers
# --------------------------------------------------------------------------

def proc_status(pid):
    """{field: kB} of the memory lines of /proc/<pid>/status."""
    out_ = {}
    try:
        with open("/proc/%d/status" % pid) as fp:
            for line in fp:
                if line.startswith(("RssAnon", "VmHWM", "VmRSS", "RssShmem")):
                    name, value = line.split(":", 1)
                    out_[name] = int(value.split()[0])
    except OSError:
        pass
    return out_


def proc_cpu_seconds(pid):
    """User + system CPU seconds of a process so far."""
    try:
        with open("/proc/%d/stat" % pid) as fp:
            fields = fp.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return 0.0


def real_child(pid):
    """The mock's own process.  lib.sh's LHD_MOCK_PID is runuser when run
    as root (its child is the python process), the mock itself when run as
    postgres: follow the first child down past any runuser or shell."""
    for _ in range(3):
        try:
            with open("/proc/%d/comm" % pid) as fp:
                comm = fp.read().strip()
            if comm not in ("bash", "sh", "runuser"):
                break
            with open("/proc/%d/task/%d/children" % (pid, pid)) as fp:
                kids = fp.read().split()
            if not kids:
                break
            pid = int(kids[0])
        except OSError:
            break
    return pid


class MemSampler:
    """Samples RssAnon of a process every interval seconds in a thread."""

    def __init__(self, pid, interval=0.05):
        self.pid = pid
        self.interval = interval
        self.max_anon = 0
        self.samples = 0
        self.start_anon = proc_status(pid).get("RssAnon", 0)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self._stop.is_set():
            anon = proc_status(self.pid).get("RssAnon")
            if anon is not None:
                self.max_anon = max(self.max_anon, anon)
                self.samples += 1
            self._stop.wait(self.interval)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join(timeout=5)
        self.hwm = proc_status(self.pid).get("VmHWM", 0)
        return False


class Perf:
    """With LHD_BENCH_PERF=<dir>: system-wide `perf record -g` around a
    measured section, and a text report written to that directory."""

    def __init__(self, bench, name):
        self.dir = os.environ.get("LHD_BENCH_PERF")
        self.name = name
        self.proc = None

    def __enter__(self):
        if self.dir and shutil.which("perf"):
            os.makedirs(self.dir, exist_ok=True)
            self.data = os.path.join(self.dir, "perf-%s.data" % self.name)
            self.proc = subprocess.Popen(["perf", "record", "-a", "-g", "-F", "499", "-o", self.data],
                                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            time.sleep(0.3)
        return self

    def __exit__(self, *exc):
        if self.proc is None:
            return False
        self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        for sort, suffix in (("comm,dso", "comm"), ("comm,sym", "sym")):
            with open(os.path.join(self.dir, "perf-%s-%s.txt" % (self.name, suffix)), "w") as fp:
                subprocess.run(["perf", "report", "-i", self.data, "--stdio", "--no-children",
                                "--sort", sort, "-g", "none", "--percent-limit", "0.5"],
                               stdout=fp, stderr=subprocess.DEVNULL, timeout=300)
        return False


# --------------------------------------------------------------------------
# The benchmark
# --------------------------------------------------------------------------

class Result:
    """One summary line: a figure's value, its baseline, their ratio, the
    target (text) and whether it was met."""

    def __init__(self, num, name, value, baseline, ratio, target, ok):
        self.num, self.name = num, name
        self.value, self.baseline, self.ratio = value, baseline, ratio
        self.target, self.ok = target, ok

    def line(self):
        def fmt(x):
            if x is None:
                return "n/a"
            if isinstance(x, float):
                return "%.4g" % x if abs(x) < 1000 else "%.0f" % x
            return str(x)
        return "figure %s: %s: value=%s baseline=%s ratio=%s target=%s %s" % (
            self.num, self.name, fmt(self.value), fmt(self.baseline), fmt(self.ratio),
            self.target, "PASS" if self.ok else "MISS")


class Bench:
    def __init__(self, args):
        self.args = args
        self.quick = args.quick
        self.work = args.work
        self.socket = args.socket
        self.port = args.port
        self.mock_port = args.mock_port
        self.mock_pid = real_child(args.mock_pid)
        self.token = args.bot_token
        self.guild = args.guild
        self.lua = args.lua
        self.results = []
        self.admin = None           # session on the worker's database

    # ---- helpers ---------------------------------------------------------

    def mock(self, method, path, body=None, timeout=60):
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request("http://127.0.0.1:%d%s" % (self.mock_port, path), data=data,
                                     method=method, headers={"content-type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=timeout) as resp:
                return json.loads(resp.read() or b"null")
        except urllib.error.HTTPError as err:
            raise BenchError("mock %s %s: %s %s" % (method, path, err.code, err.read()[:300]))

    def mock_guild(self, count, roles, start=USER_BASE + 1):
        """Reset the mock (state and counters) and create the guild with
        count generated members holding roles."""
        self.mock("POST", "/_mock/reset", {"record": False})
        self.mock("POST", "/_mock/guilds", {
            "id": self.guild, "auto_roles": True,
            "generate": {"count": count, "start_id": start, "roles": list(roles)}}, timeout=300)

    def psql_file(self, db, path, timeout):
        """Run a SQL file with psql -f (ON_ERROR_STOP) and return its output."""
        res = subprocess.run(as_pg([PG_BIN + "/psql", "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1",
                                    "-h", self.socket, "-p", str(self.port), "-d", db, "-f", path]),
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=timeout)
        text = res.stdout.decode("utf-8", "replace")
        if res.returncode != 0:
            raise BenchError("psql -f %s on %s failed:\n%s" % (path, db, text[-3000:]))
        return text

    def write_file(self, name, text):
        path = os.path.join(self.work, name)
        with open(path, "w") as fp:
            fp.write(text)
        chown_pg(path)
        return path

    def create_db(self, db, template=None):
        """A fresh database with the extension (or a copy of template)."""
        self.admin.query("DROP DATABASE IF EXISTS %s WITH (FORCE)" % db, timeout=120)
        if template is None:
            self.admin.query("CREATE DATABASE %s" % db, timeout=120)
            s = Session(self, db)
            s.query("SET client_min_messages = warning; CREATE EXTENSION lhdiscord", timeout=120)
            s.close()
            return
        # Autovacuum may still be connected to the template: retry briefly.
        deadline = time.monotonic() + 60
        while True:
            try:
                self.admin.query("CREATE DATABASE %s TEMPLATE %s STRATEGY = FILE_COPY" % (db, template),
                                 timeout=600)
                return
            except BenchError as err:
                if "being accessed by other users" not in str(err) or time.monotonic() > deadline:
                    raise
                time.sleep(1)

    def seed_sql(self, n, level="'resident'", dept="NULL", rank="'none'", role_state=True,
                 entitlement=False):
        """SQL creating n linked users fast: rows go in with
        session_replication_role = replica, so lhdiscord's (ordinary)
        triggers are skipped; the audit log's ALWAYS guards only refuse
        UPDATE/DELETE.  role_state is seeded with each member's desired
        set, so convergences need no GET member.  Expressions may use i."""
        role_rows = dict(ROLE_IDS)
        if entitlement:
            role_rows["hauling.member"] = ENTITLEMENT_ROLE
        values = ", ".join("(%s, %s)" % (sql_literal(k), sql_literal(v)) for k, v in sorted(role_rows.items()))
        sql = """
SET client_min_messages = warning;
SET session_replication_role = replica;
INSERT INTO lhdiscord.role_map (key, discord_role_id) VALUES %(values)s
  ON CONFLICT (key) DO UPDATE SET discord_role_id = EXCLUDED.discord_role_id;
INSERT INTO lhdiscord.users (user_id, username, membership_level, staff_department, staff_rank)
  SELECT i, 'user' || i, (%(level)s)::lhdiscord.membership_level,
         (%(dept)s)::lhdiscord.staff_department, (%(rank)s)::lhdiscord.staff_rank
    FROM generate_series(1, %(n)d) AS i;
INSERT INTO lhdiscord.discord_accounts (user_id, discord_user_id, username, verified_at)
  SELECT i, (%(base)d + i)::text, 'd' || i, now() FROM generate_series(1, %(n)d) AS i;
RESET session_replication_role;
""" % {"values": values, "level": level, "dept": dept, "rank": rank, "n": n, "base": USER_BASE}
        if role_state:
            sql += """
INSERT INTO lhdiscord.role_state (discord_user_id, role_ids)
  SELECT a.discord_user_id,
         array_remove(ARRAY[
           (SELECT m.discord_role_id FROM lhdiscord.role_map m WHERE m.key = u.membership_level::text),
           (SELECT m.discord_role_id FROM lhdiscord.role_map m WHERE m.key = 'verified'),
           (SELECT m.discord_role_id FROM lhdiscord.role_map m WHERE m.key = 'staff_' || u.staff_department::text),
           (SELECT m.discord_role_id FROM lhdiscord.role_map m WHERE m.key = 'rank_' || u.staff_rank::text)],
           NULL)
    FROM lhdiscord.discord_accounts a JOIN lhdiscord.users u USING (user_id);
"""
        return sql

    def check_role_state(self, s):
        """The seeded role_state must be what the engine itself wants."""
        bad = s.scalar("""
SELECT count(*) FROM (SELECT discord_user_id FROM lhdiscord.role_state ORDER BY discord_user_id LIMIT 200) x
  JOIN lhdiscord.role_state r USING (discord_user_id)
 WHERE NOT (r.role_ids @> lhdiscord.desired_roles(r.discord_user_id)
            AND r.role_ids <@ lhdiscord.desired_roles(r.discord_user_id))""")
        if int(bad) != 0:
            raise BenchError("seeded role_state differs from desired_roles() for %s accounts" % bad)

    def worker(self):
        """(pid, calls) of the background worker."""
        row = self.admin.query("SELECT pid, calls FROM lhdiscord.worker_status")[0]
        return int(row[0] or 0), int(row[1] or 0)

    def worker_conf(self, **settings):
        """ALTER SYSTEM the worker's settings, reload, and wait (bounded)
        until the worker has run an iteration after the reload."""
        for key, value in settings.items():
            if value is None:
                self.admin.query("ALTER SYSTEM RESET lhdiscord.%s" % key)
            else:
                self.admin.query("ALTER SYSTEM SET lhdiscord.%s = %s" % (key, sql_literal(value)))
        # The worker wakes on SIGHUP, re-reads the file at the top of its
        # next iteration and stamps last_activity_at at the end of it.  The
        # clock is read before the reload: the worker can finish that
        # iteration before a clock read after pg_reload_conf() returned.
        t0 = time.monotonic()
        t = float(self.admin.scalar("SELECT extract(epoch FROM clock_timestamp())"))
        self.admin.query("SELECT pg_reload_conf()")
        wait_until(lambda: float(self.admin.scalar(
            "SELECT coalesce(extract(epoch FROM last_activity_at), 0) FROM lhdiscord.worker_status")) > t,
            20, "the worker to reload its configuration")
        time.sleep(0.05)            # an iteration already under way ends; the reload's follows
        if os.environ.get("LHD_BENCH_DEBUG"):
            log("worker_conf %s took %.2f s" % (settings, time.monotonic() - t0))
        for key, value in settings.items():
            shown = self.admin.scalar("SELECT setting FROM pg_settings WHERE name = 'lhdiscord.%s'" % key)
            if value is not None and shown != str(value):
                raise BenchError("lhdiscord.%s is %s, expected %s" % (key, shown, value))

    def wait_drained(self, s, timeout, what):
        """Wait until no outbox job is pending or in flight."""
        wait_until(lambda: s.scalar(
            "SELECT NOT EXISTS (SELECT 1 FROM lhdiscord.outbox WHERE state IN ('pending', 'in_flight'))") == "t",
            timeout, what, interval=0.1)

    def mock_stats(self):
        return self.mock("GET", "/_mock/stats")

    # ---- setup -------------------------------------------------------------

    def setup(self):
        self.admin = Session(self, "postgres", "lhd-bench-admin")
        self.admin.query("SET client_min_messages = warning; CREATE EXTENSION IF NOT EXISTS lhdiscord")
        # The worker polls for the extension every poll_interval; a reload
        # wakes it at once.
        self.admin.query("SELECT pg_reload_conf()")
        wait_until(lambda: self.admin.scalar(
            "SELECT running AND last_activity_at IS NOT NULL FROM lhdiscord.worker_status") == "t",
            30, "the lhdiscord worker to start in database postgres")

    def machine(self):
        def cmd(c):
            try:
                return subprocess.run(c, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                      timeout=10, shell=True).stdout.decode().strip()
            except subprocess.SubprocessError:
                return "?"
        out("machine: %s; %s CPU(s); %s RAM; kernel %s; %s; %s" % (
            cmd("lscpu | sed -n 's/^Model name: *//p' | head -1"), os.cpu_count(),
            cmd("free -h | awk '/^Mem:/{print $2}'"), os.uname().release,
            self.admin.scalar("SELECT version()").split(",")[0],
            time.strftime("%Y-%m-%d %H:%M:%S %Z")))
        out("settings: shared_buffers=%s max_wal_size=%s fsync=%s synchronous_commit=%s work_mem=%s" % tuple(
            self.admin.scalar("SHOW %s" % g) for g in
            ("shared_buffers", "max_wal_size", "fsync", "synchronous_commit", "work_mem")))
        out("mode: %s" % ("--quick (smoke sizes; targets not asserted)" if self.quick else "full"))

    # ---- figure 1: trigger overhead ------------------------------------------

    def figure1(self):
        n_users = 10000
        duration = 3 if self.quick else 15
        clients = 4
        for db in ("bench_trig", "bench_plain"):
            self.create_db(db)
            s = Session(self, db)
            s.query(self.seed_sql(n_users, level="'resident'",
                                  dept="CASE WHEN i % 4 = 0 THEN 'engineer' END",
                                  rank="CASE WHEN i % 4 = 0 THEN 'crew_member' ELSE 'none' END"), timeout=300)
            s.query("ANALYZE", timeout=300)
            self.check_role_state(s)
            s.close()
        # The same database without lhdiscord's triggers on users,
        # discord_accounts and outbox (the audit log's guards stay).
        s = Session(self, "bench_plain")
        disabled = [r[0] for r in s.query("""
SELECT format('%s.%s', tgrelid::regclass, tgname) FROM pg_trigger
 WHERE NOT tgisinternal
   AND tgrelid IN ('lhdiscord.users'::regclass, 'lhdiscord.discord_accounts'::regclass,
                   'lhdiscord.outbox'::regclass)
 ORDER BY 1""")]
        for t in disabled:
            rel, name = t.rsplit(".", 1)
            s.query("ALTER TABLE %s DISABLE TRIGGER %s" % (rel, name))
        s.close()
        out("  triggers disabled in bench_plain: %s" % ", ".join(disabled))

        script = self.write_file("fig1.pgbench", """\
\\set uid random(1, %d)
\\set p random(1, 100)
\\if :p <= 90
UPDATE lhdiscord.users SET membership_level = CASE membership_level
    WHEN 'resident' THEN 'citizen'::lhdiscord.membership_level
    ELSE 'resident'::lhdiscord.membership_level END
  WHERE user_id = :uid;
\\else
UPDATE lhdiscord.users SET in_brig = NOT in_brig WHERE user_id = :uid;
\\endif
""" % n_users)
        order = ["bench_trig", "bench_plain"] if self.quick else \
            ["bench_trig", "bench_plain", "bench_plain", "bench_trig"]
        tps = {"bench_trig": [], "bench_plain": []}
        wpid, _ = self.worker()
        worker_cpu = {"bench_trig": 0.0, "bench_plain": 0.0}
        for i, db in enumerate(order):
            self.admin.query("CHECKPOINT", timeout=300)
            cpu0 = proc_cpu_seconds(wpid)
            with Perf(self, "fig1-%s-%d" % (db, i)):
                res = subprocess.run(as_pg([PG_BIN + "/pgbench", "-n", "-c", str(clients), "-j", "2",
                                            "-T", str(duration), "-f", script,
                                            "-h", self.socket, "-p", str(self.port), db]),
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     timeout=duration + 120)
            worker_cpu[db] += proc_cpu_seconds(wpid) - cpu0
            text = res.stdout.decode()
            m = re.search(r"tps = ([\d.]+) \(without initial connection time\)", text)
            failed = re.search(r"number of failed transactions: (\d+)", text)
            if res.returncode != 0 or not m:
                raise BenchError("pgbench on %s failed:\n%s" % (db, text[-2000:]))
            if failed and int(failed.group(1)) > 0:
                raise BenchError("pgbench on %s: %s failed transactions" % (db, failed.group(1)))
            tps[db].append(float(m.group(1)))
            out("  run %d: %-11s %8.1f TPS  (lhdiscord worker CPU during the run: %.2f s)"
                % (i + 1, db, float(m.group(1)), proc_cpu_seconds(wpid) - cpu0))
        s = Session(self, "bench_trig")
        jobs, audits = s.query("SELECT (SELECT count(*) FROM lhdiscord.outbox), "
                               "(SELECT count(*) FROM lhdiscord.audit_log)")[0]
        s.close()
        with_t, without = max(tps["bench_trig"]), max(tps["bench_plain"])
        ratio = with_t / without
        out("  with triggers: best %.1f TPS of %s; without: best %.1f TPS of %s; "
            "%s clients, -T %d, %d linked users, 90%% level / 10%% brig"
            % (with_t, tps["bench_trig"], without, tps["bench_plain"], clients, duration, n_users))
        out("  bench_trig holds %s outbox jobs and %s audit rows afterwards; worker CPU: %.2f s during "
            "triggered runs vs %.2f s during plain runs (it serves another database)"
            % (jobs, audits, worker_cpu["bench_trig"], worker_cpu["bench_plain"]))
        for db in ("bench_trig", "bench_plain"):
            self.admin.query("DROP DATABASE %s WITH (FORCE)" % db, timeout=120)
        self.results.append(Result("1", "trigger overhead (TPS with/without triggers)",
                                   with_t, without, ratio, ">=0.7", ratio >= 0.7))

    # ---- figure 2: calls per change ------------------------------------------

    def day_of_changes(self, n_users, n_changes, seed=20241120):
        """A deterministic "day" of changes over n_users staff users:
        [(kind, user_id, column, new value)], and the initial state."""
        rng = random.Random(seed)
        state = {}
        for uid in range(1, n_users + 1):
            state[uid] = {"level": rng.choice(LEVELS), "dept": rng.choice(DEPARTMENTS),
                          "rank": rng.choice(RANKS), "brig": False}
        initial = {uid: dict(st) for uid, st in state.items()}
        changes = []
        # Kinds and weights (per draw; a flapping episode is 4 changes).
        kinds = [("level", 40), ("department", 15), ("rank", 15), ("brig", 5), ("release", 5), ("flap", 5)]
        total = sum(w for _, w in kinds)
        while len(changes) < n_changes:
            r = rng.uniform(0, total)
            for kind, w in kinds:
                r -= w
                if r <= 0:
                    break
            free = [u for u, st in state.items() if not st["brig"]]
            brigged = [u for u, st in state.items() if st["brig"]]
            if kind == "release" and not brigged:
                kind = "brig"
            if kind == "release":
                uid = rng.choice(brigged)
                state[uid]["brig"] = False
                changes.append(("release", uid, "in_brig", "false"))
                continue
            uid = rng.choice(free)
            st = state[uid]
            if kind == "level":
                new = rng.choice([l for l in LEVELS if l != st["level"]])
                name = "promotion" if LEVELS.index(new) > LEVELS.index(st["level"]) else "demotion"
                st["level"] = new
                changes.append((name, uid, "membership_level", new))
            elif kind == "department":
                st["dept"] = rng.choice([d for d in DEPARTMENTS if d != st["dept"]])
                changes.append(("department", uid, "staff_department", st["dept"]))
            elif kind == "rank":
                st["rank"] = rng.choice([k for k in RANKS if k != st["rank"]])
                changes.append(("rank", uid, "staff_rank", st["rank"]))
            elif kind == "brig":
                st["brig"] = True
                changes.append(("brig", uid, "in_brig", "true"))
            else:
                # Flapping: the level goes back and forth twice in a row.
                a = st["level"]
                b = rng.choice([l for l in LEVELS if l != a])
                for new in (b, a, b, a):
                    changes.append(("flap", uid, "membership_level", new))
        return initial, changes[:n_changes]

    SEED_FUNCTIONS = r"""
-- The seed algorithm (Lighthouse's remove-all-then-add sync), counted per
-- active account.  seed_permissions_calls is the logic of seed_calls() in
-- sql/include/roles_setup.sql: SyncDiscordRoles (DELETE every configured
-- membership role, PUT the current one, PUT verified) + SyncDiscordStaff
-- (DELETE every configured staff_ and rank_ role, PUT the current
-- department's and rank's).  Unconfigured roles send nothing.
CREATE FUNCTION public.seed_active_accounts(uid bigint) RETURNS bigint LANGUAGE sql STABLE AS $$
  SELECT count(*) FROM lhdiscord.discord_accounts a WHERE a.user_id = uid AND a.status = 'active' $$;
CREATE FUNCTION public.seed_staff_calls(uid bigint) RETURNS bigint LANGUAGE sql STABLE AS $$
  WITH m AS (SELECT key FROM lhdiscord.role_map WHERE coalesce(discord_role_id, '') <> ''),
       u AS (SELECT * FROM lhdiscord.users WHERE user_id = uid)
  SELECT public.seed_active_accounts(uid)
       * ((SELECT count(*) FROM m WHERE key LIKE 'staff\_%' OR key LIKE 'rank\_%')
          + (SELECT count(*) FROM m, u WHERE m.key = 'staff_' || u.staff_department::text)
          + (SELECT count(*) FROM m, u WHERE m.key = 'rank_' || u.staff_rank::text)) $$;
CREATE FUNCTION public.seed_permissions_calls(uid bigint) RETURNS bigint LANGUAGE sql STABLE AS $$
  WITH m AS (SELECT key FROM lhdiscord.role_map WHERE coalesce(discord_role_id, '') <> ''),
       u AS (SELECT * FROM lhdiscord.users WHERE user_id = uid)
  SELECT public.seed_active_accounts(uid)
       * ((SELECT count(*) FROM m WHERE key IN ('traveler', 'resident', 'citizen'))
          + (SELECT count(*) FROM m, u WHERE m.key = u.membership_level::text)
          + (SELECT count(*) FROM m WHERE key = 'verified'))
       + public.seed_staff_calls(uid) $$;
-- removeAllManagedRoles: DELETE every configured role.
CREATE FUNCTION public.seed_strip_calls(uid bigint) RETURNS bigint LANGUAGE sql STABLE AS $$
  SELECT public.seed_active_accounts(uid)
       * (SELECT count(*) FROM lhdiscord.role_map WHERE coalesce(discord_role_id, '') <> '') $$;
CREATE TABLE public.bench_changes (no int PRIMARY KEY, kind text, user_id bigint, seed_calls bigint);
"""

    def figure2(self):
        n_users = 200
        n_changes = 200 if self.quick else 1000
        fold_every = 20
        initial, changes = self.day_of_changes(n_users, n_changes)
        # Template: 200 linked staff users in the script's initial state, every
        # fixed role key mapped, role_state and the fake guild = desired roles.
        self.create_db("bench_calls_tmpl")
        s = Session(self, "bench_calls_tmpl")
        s.query(self.seed_sql(n_users), timeout=120)
        s.query("UPDATE lhdiscord.users u SET membership_level = x.l::lhdiscord.membership_level, "
                "staff_department = x.d::lhdiscord.staff_department, staff_rank = x.r::lhdiscord.staff_rank "
                "FROM (VALUES %s) AS x(id, l, d, r) WHERE u.user_id = x.id; "
                % ", ".join("(%d, '%s', '%s', '%s')" % (u, st["level"], st["dept"], st["rank"])
                            for u, st in sorted(initial.items()))
                # That UPDATE queued convergences: drop them, set the state.
                + "DELETE FROM lhdiscord.outbox; DELETE FROM lhdiscord.role_state; "
                "INSERT INTO lhdiscord.role_state (discord_user_id, role_ids) "
                "  SELECT discord_user_id, lhdiscord.desired_roles(discord_user_id) FROM lhdiscord.discord_accounts; "
                "INSERT INTO lhdiscord.fake_members (discord_user_id, role_ids) "
                "  SELECT discord_user_id, role_ids FROM lhdiscord.role_state;", timeout=120)
        s.query(self.SEED_FUNCTIONS)
        s.close()
        for db in ("bench_calls_each", "bench_calls_fold"):
            self.create_db(db, template="bench_calls_tmpl")

        def script(drain_every):
            lines = ["SET client_min_messages = warning;", "SET lhdiscord.api_mode = 'fake';",
                     "TRUNCATE lhdiscord.fake_calls;"]
            for no, (kind, uid, col, value) in enumerate(changes, 1):
                if kind == "brig":
                    fn = "seed_strip_calls"        # counted before: accounts still active
                elif kind in ("department", "rank"):
                    fn = "seed_staff_calls"
                else:
                    fn = "seed_permissions_calls"  # level changes, flapping, release
                record = "INSERT INTO public.bench_changes VALUES (%d, '%s', %d, public.%s(%d));" % (
                    no, kind, uid, fn, uid)
                update = "UPDATE lhdiscord.users SET %s = '%s' WHERE user_id = %d;" % (col, value, uid)
                lines += [record, update] if kind == "brig" else [update, record]
                if no % drain_every == 0:
                    lines.append("SELECT lhdiscord.drain_outbox(100000);")
            lines.append("SELECT lhdiscord.drain_outbox(100000);")
            return "\n".join(lines) + "\n"

        stats = {}
        for db, every in (("bench_calls_each", 1), ("bench_calls_fold", fold_every)):
            path = self.write_file("fig2-%s.sql" % db, script(every))
            t0 = time.monotonic()
            self.psql_file(db, path, timeout=600)
            elapsed = time.monotonic() - t0
            s = Session(self, db)
            by_method = dict((r[0], int(r[1])) for r in s.query(
                "SELECT method, count(*) FROM lhdiscord.fake_calls GROUP BY 1 ORDER BY 1"))
            seed_total = int(s.scalar("SELECT sum(seed_calls) FROM public.bench_changes"))
            by_kind = s.query("""
SELECT kind, count(*), sum(seed_calls) FROM public.bench_changes GROUP BY 1 ORDER BY 1""")
            # Convergence check: every member of the fake guild holds its desired set.
            wrong = int(s.scalar("""
SELECT count(*) FROM lhdiscord.discord_accounts a
  JOIN lhdiscord.fake_members f USING (discord_user_id)
 WHERE NOT (f.role_ids @> lhdiscord.desired_roles(a.discord_user_id)
            AND f.role_ids <@ lhdiscord.desired_roles(a.discord_user_id))"""))
            left = int(s.scalar("SELECT count(*) FROM lhdiscord.outbox WHERE state <> 'done'"))
            s.close()
            if wrong or left:
                raise BenchError("%s: %d members not converged, %d jobs not done" % (db, wrong, left))
            total = sum(by_method.values())
            stats[db] = (total, total - by_method.get("GET", 0), by_method, seed_total, elapsed)
            out("  %-17s drain every %-4d change(s): %5d calls %s in %.1f s; members converged: all %d"
                % (db, every, total, by_method, elapsed, n_users))
        out("  changes by kind (count, seed calls): %s"
            % ", ".join("%s %s/%s" % (k, c, sc) for k, c, sc in by_kind))
        each_total, each_nonget, _, seed_total, _ = stats["bench_calls_each"]
        fold_total, fold_nonget, _, _, _ = stats["bench_calls_fold"]
        out("  %d changes over %d staff users: seed algorithm %d calls (%.2f/change); lhdiscord %d "
            "(%.2f/change, excluding GET member: %d) draining after every change, %d (%.2f/change) "
            "draining every %d changes" % (
                len(changes), n_users, seed_total, seed_total / len(changes), each_total,
                each_total / len(changes), each_nonget, fold_total, fold_total / len(changes), fold_every))
        out("  ratio lhdiscord/seed: %.3f (drain every change), %.3f (every %d)"
            % (each_total / seed_total, fold_total / seed_total, fold_every))
        for db in ("bench_calls_tmpl", "bench_calls_each", "bench_calls_fold"):
            self.admin.query("DROP DATABASE %s WITH (FORCE)" % db, timeout=120)
        ratio = each_total / seed_total
        self.results.append(Result("2", "calls per change (lhdiscord, drain after every change / seed)",
                                   each_total, seed_total, ratio, "<=0.2", ratio <= 0.2))

    # ---- figure 3: drain throughput and latency ------------------------------

    def figure3(self):
        n = 1000 if self.quick else 20000
        m = 30 if self.quick else 200
        self.fig3_users = n
        self.fig3_latency_users = m
        s = Session(self, "postgres", "lhd-bench-fig3")
        s.query("SET client_min_messages = warning; "
                "TRUNCATE lhdiscord.users, lhdiscord.role_state, lhdiscord.outbox CASCADE", timeout=120)
        s.query(self.seed_sql(n, level="'traveler'"), timeout=300)
        s.query("ANALYZE", timeout=300)
        self.check_role_state(s)
        base_roles = [ROLE_IDS["traveler"], ROLE_IDS["verified"]]
        self.mock_guild(n, base_roles)
        self.worker_conf(global_rate_limit=0, max_concurrency=32, poll_interval=None)
        wpid, calls0 = self.worker()
        stats0 = self.mock_stats()

        # Throughput: one statement gives every user rank jr_crew: N jobs,
        # exactly one PUT each.  Timed from commit until nothing is pending.
        # The outbox is analyzed in the same transaction, so the worker plans
        # its queries with statistics that match the backlog: plans cached
        # while the outbox looked empty (0 blocks, reltuples 0) can scan the
        # whole outbox once per candidate row (BENCHMARKS.md, observations).
        cpu_w, cpu_m = proc_cpu_seconds(wpid), proc_cpu_seconds(self.mock_pid)
        with Perf(self, "fig3-drain"), MemSampler(wpid) as mem:
            t_commit = float(s.scalar(
                "BEGIN; UPDATE lhdiscord.users SET staff_rank = 'jr_crew' WHERE user_id <= %d; "
                "ANALYZE lhdiscord.outbox; COMMIT; "
                "SELECT extract(epoch FROM clock_timestamp())" % n, timeout=300))
            self.wait_drained(s, 120 if self.quick else 600, "the worker to drain %d role changes" % n)
        cpu_w, cpu_m = proc_cpu_seconds(wpid) - cpu_w, proc_cpu_seconds(self.mock_pid) - cpu_m
        done, bad, t_end = s.query("""
SELECT count(*) FILTER (WHERE state = 'done'), count(*) FILTER (WHERE state <> 'done'),
       extract(epoch FROM max(finished_at)) FROM lhdiscord.outbox""")[0]
        _, calls1 = self.worker()
        stats1 = self.mock_stats()
        calls = calls1 - calls0
        mock_calls = stats1["bot_requests"] - stats0["bot_requests"]
        elapsed = float(t_end) - t_commit
        # A worker (re)started for this figure first sends its one token probe.
        if int(done) != n or int(bad) != 0 or calls not in (n, n + 1):
            raise BenchError("drain: %s done, %s not done, %d calls (expected %d each, and maybe the token probe)"
                             % (done, bad, calls, n))
        rate = calls / elapsed
        out("  lhdiscord: %d role changes -> %d calls (mock saw %d, statuses %s) in %.2f s = %.0f calls/s "
            "(max_concurrency 32, global_rate_limit 0); worker RssAnon peak %d KiB"
            % (n, calls, mock_calls, stats1["by_status"], elapsed, rate, mem.max_anon))
        out("  CPU during the drain: worker %.2f s (%.0f%% of one core), mock %.2f s (%.0f%%)"
            % (cpu_w, 100 * cpu_w / elapsed, cpu_m, 100 * cpu_m / elapsed))

        # wrk, same connections, same route, similar duration.
        duration = max(2, min(15, int(round(elapsed))))
        cpu_m = proc_cpu_seconds(self.mock_pid)
        with Perf(self, "fig3-wrk"):
            res = subprocess.run(as_pg(["wrk", "-t", "2", "-c", "32", "-d", "%ds" % duration, "-s", self.lua,
                                        "http://127.0.0.1:%d" % self.mock_port, "--", self.guild, self.token,
                                        str(USER_BASE + 1), ROLE_IDS["rank_jr_crew"], str(n)]),
                                 stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=duration + 60)
        text = res.stdout.decode()
        mrps = re.search(r"Requests/sec:\s+([\d.]+)", text)
        statuses = re.search(r"status counts:(.*)", text)
        if res.returncode != 0 or not mrps:
            raise BenchError("wrk failed:\n%s" % text[-2000:])
        wrk_rps = float(mrps.group(1))
        if statuses and re.search(r"\b(?!204=)\d+=", statuses.group(1)):
            raise BenchError("wrk got non-204 responses: %s" % statuses.group(1))
        cpu_m = proc_cpu_seconds(self.mock_pid) - cpu_m
        out("  wrk: -t2 -c32 -d%ds PUT role route: %.0f req/s (statuses:%s); mock CPU %.2f s (%.0f%% of one core)"
            % (duration, wrk_rps, statuses.group(1) if statuses else " ?", cpu_m, 100 * cpu_m / duration))
        ratio = rate / wrk_rps
        self.results.append(Result("3a", "drain throughput (worker calls/s / wrk req/s)", rate, wrk_rps,
                                   ratio, ">=0.5 and >=2000 calls/s", ratio >= 0.5 and rate >= 2000))

        # Latency: the worker idle (long poll), one change at a time.
        self.worker_conf(poll_interval=3600)
        self.mock("POST", "/_mock/config", {"record": True})
        since = self.mock("GET", "/_mock/requests?since=999999999999&limit=1")["last_seq"]
        # The commit happens between the two clock readings: just before
        # COMMIT (inside the transaction) and right after it returned.
        commits, before = {}, {}
        for uid in range(1, m + 1):
            time.sleep(0.05)        # the worker is idle again
            rows = s.query(
                "BEGIN; UPDATE lhdiscord.users SET staff_rank = 'none' WHERE user_id = %d; "
                "SELECT extract(epoch FROM clock_timestamp()); COMMIT; "
                "SELECT extract(epoch FROM clock_timestamp())" % uid)
            before[uid], commits[uid] = float(rows[0][0]), float(rows[1][0])
        self.wait_drained(s, 60, "the latency changes to be sent")
        reqs = self.mock("GET", "/_mock/requests?since=%d&path_prefix=/api/v10/guilds/" % since)["requests"]
        self.mock("POST", "/_mock/config", {"record": False})
        first = {}
        for r in reqs:
            uid = int(r["path"].split("/members/")[1].split("/")[0]) - USER_BASE
            if uid in commits and uid not in first:
                first[uid] = r["t"]
        if len(first) != m:
            raise BenchError("latency: %d of %d changes reached the mock" % (len(first), m))
        lat = [(first[u] - commits[u]) * 1000.0 for u in commits]
        lat_before = [(first[u] - before[u]) * 1000.0 for u in commits]
        p50, p99 = percentile(lat, 50), percentile(lat, 99)
        out("  commit-to-request latency over %d single-row commits (50 ms apart, poll_interval 3600), "
            "from the clock right after COMMIT returned: p50 %.2f ms, p99 %.2f ms, min %.2f ms, max %.2f ms"
            % (m, p50, p99, min(lat), max(lat)))
        out("  from the clock just before COMMIT (an upper bound; includes the commit's WAL flush): "
            "p50 %.2f ms, p99 %.2f ms, max %.2f ms"
            % (percentile(lat_before, 50), percentile(lat_before, 99), max(lat_before)))
        self.worker_conf(poll_interval=None)
        s.close()
        self.results.append(Result("3b", "commit-to-request latency p50 ms (p99 as baseline)", p50, p99,
                                   None, "p50<10ms", p50 < 10.0))

    # ---- figure 4: rate-limit utilisation ------------------------------------

    def figure4(self):
        n = getattr(self, "fig3_users", None)
        if n is None:
            raise BenchError("figure 4 needs figure 3's users (run with --only 3,4)")
        backlog = 200 if self.quick else 5000
        first_user = self.fig3_latency_users + 1
        if first_user + backlog - 1 > n:
            raise BenchError("not enough users for the backlog")
        # Discord's limits: 50 requests/s global, and a bucket on the role route.
        self.mock("POST", "/_mock/reset", {"record": False, "global_limit": 50,
                                           "buckets": {ROLE_BUCKET: {"limit": 50, "window": 1.0}}})
        self.mock("POST", "/_mock/guilds", {
            "id": self.guild, "auto_roles": True,
            "generate": {"count": n, "start_id": USER_BASE + 1,
                         "roles": [ROLE_IDS["traveler"], ROLE_IDS["verified"], ROLE_IDS["rank_jr_crew"]]}},
            timeout=300)
        self.worker_conf(global_rate_limit=50, max_concurrency=32)
        s = Session(self, "postgres", "lhd-bench-fig4")
        s.query("DELETE FROM lhdiscord.outbox")
        with Perf(self, "fig4"):
            t_commit = float(s.scalar(
                "BEGIN; UPDATE lhdiscord.users SET staff_rank = 'none' WHERE user_id BETWEEN %d AND %d; "
                "ANALYZE lhdiscord.outbox; COMMIT; "
                "SELECT extract(epoch FROM clock_timestamp())" % (first_user, first_user + backlog - 1)))
            self.wait_drained(s, backlog / 50.0 * 2 + 60, "the rate-limited backlog of %d to drain" % backlog)
        done, bad, t_end = s.query("""
SELECT count(*) FILTER (WHERE state = 'done'), count(*) FILTER (WHERE state <> 'done'),
       extract(epoch FROM max(finished_at)) FROM lhdiscord.outbox""")[0]
        s.close()
        st = self.mock_stats()
        ok = sum(v for k, v in st["by_status"].items() if k.startswith("2"))
        limited = st["rate_limited_429"]
        elapsed = float(t_end) - t_commit
        if int(done) != backlog or int(bad) != 0 or ok != backlog:
            raise BenchError("rate-limited drain: %s done, %s not, %d successful calls" % (done, bad, ok))
        rate = ok / elapsed
        share429 = limited / max(1, st["bot_requests"])
        out("  %d changes (one DELETE each) drained in %.2f s: %.2f calls/s of the allowed 50/s; "
            "%d requests, %d 429s (%.2f%%: %d global, %d bucket); mock max_per_second %d"
            % (backlog, elapsed, rate, st["bot_requests"], limited, share429 * 100,
               st["rate_limited_global"], st["rate_limited_bucket"], st["max_per_second"]))
        ideal = (backlog - 50) / 50.0
        out("  a sender using every slot of the 50/s window (50 at once, then 50 per second) needs %.2f s "
            "for %d calls; lhdiscord took %.2f s (ideal/actual %.3f)" % (ideal, backlog, elapsed, ideal / elapsed))
        self.mock("POST", "/_mock/reset", {"record": False})
        self.worker_conf(global_rate_limit=0)
        ratio = rate / 50.0
        self.results.append(Result("4", "rate-limit utilisation (calls/s / 50; 429 share %.2f%%)" % (share429 * 100),
                                   rate, 50.0, ratio, ">=0.9 and 429s<=1%",
                                   ratio >= 0.9 and share429 <= 0.01))

    # ---- figure 5: reconcile at scale ----------------------------------------

    LOOP_FUNCTION = r"""
-- The runbook's job as a per-user loop: for each user look up entitlement in
-- the latest trusted snapshot through the linked active accounts and
-- privilege (roles, break_glass), decide with the same matrix, and when the
-- state changes update the status, remove portal roles, revoke sessions and
-- write audit rows; exemptions are remembered as reconcile() does.
CREATE FUNCTION public.bench_reconcile_loop() RETURNS bigint LANGUAGE plpgsql AS $$
DECLARE
  ctx record;
  u record;
  v_entitled boolean;
  v_privileged boolean;
  v_kind text;
  v_rule text;
  v_new text;
  v_roles text[];
  v_revoke boolean;
  v_was_exempt boolean;
  changed bigint := 0;
BEGIN
  SELECT * INTO ctx FROM lhdiscord.access_context();
  FOR u IN SELECT user_id, status::text AS status, in_scope FROM lhdiscord.users
            WHERE status <> 'disabled' ORDER BY user_id LOOP
    v_entitled := coalesce(ctx.snapshot_fresh, false) AND EXISTS (
      SELECT 1 FROM lhdiscord.discord_accounts a
        JOIN lhdiscord.snapshot_members m
          ON m.snapshot_id = ctx.snapshot_id AND m.discord_user_id = a.discord_user_id
       WHERE a.user_id = u.user_id AND a.status = 'active'
         AND ctx.entitlement_role_id = ANY (m.role_ids));
    v_kind := CASE
      WHEN EXISTS (SELECT 1 FROM lhdiscord.break_glass b
                    WHERE b.user_id = u.user_id AND b.expires_at > now()) THEN 'break_glass'
      WHEN EXISTS (SELECT 1 FROM lhdiscord.user_roles r
                    WHERE r.user_id = u.user_id AND r.role = ANY (ctx.privileged_roles)) THEN 'privileged_role'
    END;
    v_privileged := v_kind IS NOT NULL;
    v_rule := lhdiscord.decide(u.in_scope, v_entitled, v_privileged);
    v_new := CASE WHEN v_rule IN ('in_scope_entitled', 'exempt') THEN 'active' ELSE 'suspended' END;
    v_roles := NULL;
    IF v_new = 'suspended' THEN
      SELECT array_agg(r.role ORDER BY r.role) INTO v_roles FROM lhdiscord.user_roles r WHERE r.user_id = u.user_id;
    END IF;
    IF v_new <> u.status OR v_roles IS NOT NULL THEN
      v_revoke := v_new = 'suspended' AND u.status <> 'suspended' AND v_rule <> 'not_in_scope_not_entitled';
      UPDATE lhdiscord.users SET status = v_new::lhdiscord.identity_status,
             session_revoked_at = CASE WHEN v_revoke THEN now() ELSE session_revoked_at END
       WHERE user_id = u.user_id;
      IF v_roles IS NOT NULL THEN
        DELETE FROM lhdiscord.user_roles WHERE user_id = u.user_id AND role = ANY (v_roles);
      END IF;
      INSERT INTO lhdiscord.audit_log (action, subject_user_id, entity, entity_pk, before_json, after_json, description)
      VALUES ('entitlement.reconcile', u.user_id, 'users', u.user_id::text,
              jsonb_build_object('status', u.status, 'roles', coalesce(v_roles, '{}')),
              jsonb_build_object('decision', v_new, 'rule', v_rule, 'snapshot_id', ctx.snapshot_id,
                                 'in_scope', u.in_scope, 'entitled', v_entitled, 'privileged', v_privileged,
                                 'roles_removed', coalesce(v_roles, '{}'), 'sessions_revoked', v_revoke,
                                 'old_status', u.status, 'new_status', v_new),
              format('%s -> %s by rule %s (loop)', u.status, v_new, v_rule));
      IF v_revoke THEN
        INSERT INTO lhdiscord.audit_log (action, subject_user_id, entity, entity_pk, after_json, description)
        VALUES ('entitlement.sessions_revoked', u.user_id, 'users', u.user_id::text,
                jsonb_build_object('rule', v_rule, 'session_revoked', true), 'Sessions revoked on suspension');
      END IF;
      changed := changed + 1;
    END IF;
    SELECT s.exempt_since IS NOT NULL INTO v_was_exempt FROM lhdiscord.access_state s WHERE s.user_id = u.user_id;
    IF (v_rule = 'exempt') <> coalesce(v_was_exempt, false) THEN
      INSERT INTO lhdiscord.access_state (user_id, exempt_since, exemption)
      VALUES (u.user_id, CASE WHEN v_rule = 'exempt' THEN now() END, CASE WHEN v_rule = 'exempt' THEN v_kind END)
      ON CONFLICT (user_id) DO UPDATE SET exempt_since = EXCLUDED.exempt_since, exemption = EXCLUDED.exemption;
      IF v_rule = 'exempt' THEN
        INSERT INTO lhdiscord.audit_log (action, subject_user_id, entity, entity_pk, after_json, description)
        VALUES ('entitlement.exemption', u.user_id, 'users', u.user_id::text,
                jsonb_build_object('exemption', v_kind, 'rule', v_rule, 'prevented', 'suspended'),
                format('Suspension prevented by %s', v_kind));
      END IF;
    END IF;
  END LOOP;
  RETURN changed;
END $$;
"""

    def figure5(self):
        n = 10000 if self.quick else 1000000
        timeout = 300 if self.quick else 1800
        self.create_db("bench_reconcile")
        s = Session(self, "bench_reconcile", "lhd-bench-fig5-load")
        t0 = time.monotonic()
        # Every user: linked, in scope, portal role "crew"; every 10th lacks
        # the entitlement role in the snapshot (-> suspended, sessions
        # revoked, "crew" removed); every 1000th is an admin (privileged:
        # exempt instead), and users 10, 10010, ... hold a break-glass grant.
        s.query(self.seed_sql(n, level="'resident'", role_state=False, entitlement=True)
                + """
SET session_replication_role = replica;
INSERT INTO lhdiscord.user_roles (user_id, role) SELECT i, 'crew' FROM generate_series(1, %(n)d) AS i;
INSERT INTO lhdiscord.user_roles (user_id, role) SELECT i, 'admin' FROM generate_series(1000, %(n)d, 1000) AS i;
INSERT INTO lhdiscord.break_glass (user_id, reason, expires_at)
  SELECT i, 'benchmark', now() + interval '1 day' FROM generate_series(10, %(n)d, 10000) AS i;
INSERT INTO lhdiscord.member_snapshots (taken_at, complete, trusted, member_count, source, finished_at)
  VALUES (now(), true, true, %(n)d, 'load', now());
INSERT INTO lhdiscord.snapshot_members (snapshot_id, discord_user_id, role_ids)
  SELECT (SELECT max(id) FROM lhdiscord.member_snapshots), (%(base)d + i)::text,
         CASE WHEN i %% 10 = 0 THEN ARRAY['%(res)s', '%(ver)s']
              ELSE ARRAY['%(res)s', '%(ver)s', '%(ent)s'] END
    FROM generate_series(1, %(n)d) AS i;
RESET session_replication_role;
""" % {"n": n, "base": USER_BASE, "res": ROLE_IDS["resident"], "ver": ROLE_IDS["verified"],
       "ent": ENTITLEMENT_ROLE}, timeout=timeout)
        s.query("VACUUM ANALYZE", timeout=timeout)
        size = s.scalar("SELECT pg_size_pretty(pg_database_size(current_database()))")
        s.close()
        load = time.monotonic() - t0
        t1 = time.monotonic()
        self.create_db("bench_reconcile_loop", template="bench_reconcile")
        out("  data: %d users, %d linked accounts, %d portal roles, a %d-member snapshot (%s) loaded in "
            "%.1f s; identical copy for the loop in %.1f s" % (n, n, n + n // 1000, n, size, load,
                                                           time.monotonic() - t1))

        def timed(db, sql, what):
            sess = Session(self, db, "lhd-bench-fig5")
            sess.query("CHECKPOINT", timeout=timeout)
            with Perf(self, "fig5-%s" % what), MemSampler(sess.pid) as mem:
                t = time.monotonic()
                value = int(sess.scalar(sql, timeout=timeout))
                elapsed = time.monotonic() - t
            sess.close()
            return value, elapsed, mem

        r1, t_r1, mem1 = timed("bench_reconcile", "SELECT count(*) FROM lhdiscord.reconcile()", "reconcile1")
        r2, t_r2, mem2 = timed("bench_reconcile", "SELECT count(*) FROM lhdiscord.reconcile()", "reconcile2")
        s = Session(self, "bench_reconcile_loop")
        s.query(self.LOOP_FUNCTION)
        s.close()
        l1, t_l1, lmem1 = timed("bench_reconcile_loop", "SELECT public.bench_reconcile_loop()", "loop1")
        l2, t_l2, lmem2 = timed("bench_reconcile_loop", "SELECT public.bench_reconcile_loop()", "loop2")

        # Both must have reached the same state.
        q = ("SELECT status, count(*) FILTER (WHERE session_revoked_at IS NOT NULL), count(*) "
             "FROM lhdiscord.users GROUP BY 1 ORDER BY 1")
        sa, sb = Session(self, "bench_reconcile"), Session(self, "bench_reconcile_loop")
        state_a, state_b = sa.query(q), sb.query(q)
        roles_a = sa.scalar("SELECT count(*) FROM lhdiscord.user_roles")
        roles_b = sb.scalar("SELECT count(*) FROM lhdiscord.user_roles")
        sa.close()
        sb.close()
        out("  reconcile(): first run %d rows in %.2f s, rerun %d rows in %.3f s; backend RssAnon peak "
            "%.1f MiB (first run; %.1f MiB before), %.1f MiB (rerun); VmHWM %.1f MiB (includes shared buffers touched)"
            % (r1, t_r1, r2, t_r2, mem1.max_anon / 1024, mem1.start_anon / 1024, mem2.max_anon / 1024,
               mem1.hwm / 1024))
        out("  per-user loop:  first run %d changes in %.2f s, rerun %d in %.2f s; backend RssAnon peak %.1f MiB"
            % (l1, t_l1, l2, t_l2, max(lmem1.max_anon, lmem2.max_anon) / 1024))
        out("  loop/reconcile: first run %.1fx, rerun %.1fx; final states equal: %s (users by status: %s; "
            "portal roles left %s / %s)" % (t_l1 / t_r1, t_l2 / t_r2,
                                            state_a == state_b and roles_a == roles_b,
                                            ", ".join("%s %s (%s revoked)" % (x[0], x[2], x[1]) for x in state_a),
                                            roles_a, roles_b))
        if r2 != 0 or l2 != 0:
            raise BenchError("reruns must change nothing: reconcile %d rows, loop %d" % (r2, l2))
        if state_a != state_b or roles_a != roles_b:
            raise BenchError("reconcile and the loop disagree: %s / %s" % (state_a, state_b))
        for db in ("bench_reconcile", "bench_reconcile_loop"):
            self.admin.query("DROP DATABASE %s WITH (FORCE)" % db, timeout=300)
        ratio = t_l2 / t_r2
        self.results.append(Result("5", "reconcile rerun seconds (loop rerun as baseline; first run %.2f s vs %.2f s, "
                                        "%.1fx; peak RssAnon %.0f MiB)" % (t_r1, t_l1, t_l1 / t_r1, mem1.max_anon / 1024),
                                   t_r2, t_l2, ratio, "rerun<5s and >=20x", t_r2 < 5.0 and ratio >= 20))

    # ---- figure 6: member scan -----------------------------------------------

    BASELINE_CLIENT = r"""
import http.client, json, sys, time
port, guild, token = sys.argv[1], sys.argv[2], sys.argv[3]
conn = http.client.HTTPConnection("127.0.0.1", int(port), timeout=60)
headers = {"Authorization": "Bot " + token, "User-Agent": "DiscordBot (https://example.invalid, 0.1)"}
after, pages, members = "0", 0, 0
t = time.monotonic()
while True:
    conn.request("GET", "/api/v10/guilds/%s/members?limit=1000&after=%s" % (guild, after), headers=headers)
    resp = conn.getresponse()
    body = resp.read()
    if resp.status != 200:
        sys.exit("HTTP %d: %r" % (resp.status, body[:200]))
    page = json.loads(body)
    pages += 1
    members += len(page)
    if len(page) < 1000:
        break
    after = page[-1]["user"]["id"]
print(json.dumps({"seconds": time.monotonic() - t, "pages": pages, "members": members}))
"""

    def figure6(self):
        n = 5000 if self.quick else 250000
        self.mock_guild(n, [ROLE_IDS["resident"], ROLE_IDS["verified"]])
        self.worker_conf(global_rate_limit=0, max_concurrency=32)
        # Baseline first (the worker reconciles after its scan; keep that out).
        path = self.write_file("fig6_client.py", self.BASELINE_CLIENT)
        res = subprocess.run(as_pg(["python3", path, str(self.mock_port), self.guild, self.token]),
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=600)
        if res.returncode != 0:
            raise BenchError("baseline client failed: %s" % res.stdout.decode()[-1000:])
        base = json.loads(res.stdout.decode().strip().splitlines()[-1])
        stats0 = self.mock_stats()
        s = Session(self, "postgres", "lhd-bench-fig6")
        wpid, _ = self.worker()
        cpu_w, cpu_m = proc_cpu_seconds(wpid), proc_cpu_seconds(self.mock_pid)
        with Perf(self, "fig6"), MemSampler(wpid) as mem:
            row = s.query("SELECT lhdiscord.request_member_scan(), extract(epoch FROM clock_timestamp())")[0]
            snap, t0 = int(row[0]), float(row[1])
            wait_until(lambda: s.scalar("SELECT complete FROM lhdiscord.member_snapshots WHERE id = %d" % snap) == "t",
                       120 if self.quick else 900, "the member scan to complete", interval=0.2)
        cpu_w, cpu_m = proc_cpu_seconds(wpid) - cpu_w, proc_cpu_seconds(self.mock_pid) - cpu_m
        count, t_end = s.query("SELECT member_count, extract(epoch FROM finished_at) "
                               "FROM lhdiscord.member_snapshots WHERE id = %d" % snap)[0]
        stored = int(s.scalar("SELECT count(*) FROM lhdiscord.snapshot_members WHERE snapshot_id = %d" % snap))
        stats1 = self.mock_stats()
        pages = stats1["bot_requests"] - stats0["bot_requests"]
        elapsed = float(t_end) - t0
        if int(count) != n or stored != n:
            raise BenchError("scan stored %s/%d members (expected %d)" % (count, stored, n))
        # The worker reconciles after a completed scan: let it finish.
        wait_until(lambda: s.scalar("SELECT state FROM pg_stat_activity WHERE pid = %d" % wpid) == "idle",
                   300, "the worker to go idle after the scan", interval=0.2)
        s.close()
        ratio = base["seconds"] / elapsed
        out("  lhdiscord scan: %d members, %d pages in %.2f s = %.0f members/s; worker RssAnon %.1f MiB idle, "
            "peak %.1f MiB during the scan (%d samples)"
            % (n, pages, elapsed, n / elapsed, mem.start_anon / 1024, mem.max_anon / 1024, mem.samples))
        out("  CPU during the scan: worker %.2f s (%.0f%% of one core), mock %.2f s (%.0f%%)"
            % (cpu_w, 100 * cpu_w / elapsed, cpu_m, 100 * cpu_m / elapsed))
        out("  plain client (python http.client + json, keep-alive): %d pages in %.2f s = %.0f members/s"
            % (base["pages"], base["seconds"], base["members"] / base["seconds"]))
        bounded = mem.max_anon < 64 * 1024
        self.results.append(Result("6", "member scan seconds (plain client as baseline; %.0f members/s, peak "
                                        "worker RssAnon %.1f MiB)" % (n / elapsed, mem.max_anon / 1024),
                                   elapsed, base["seconds"], ratio,
                                   "completes, worker RssAnon<64MiB", bounded))

    # ---- figure 7: brig-strip latency under a bulk backlog -------------------

    @staticmethod
    def window_max(times, width=1.0):
        """Most timestamps in any sliding window of width seconds."""
        times = sorted(times)
        best, lo = 0, 0
        for hi, t in enumerate(times):
            while t - times[lo] >= width:
                lo += 1
            best = max(best, hi - lo + 1)
        return best

    def fig7_brigs(self, s, targets, interval):
        """Brig each target in turn, interval s apart; wait (bounded) until
        both of its role DELETEs reached the mock.  Returns the strip
        latencies in ms: last DELETE's arrival minus the commit."""
        since = self.mock("GET", "/_mock/requests?since=999999999999&limit=1")["last_seq"]
        commits = {}
        t_next = time.monotonic()
        for uid in targets:
            delay = t_next - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            t_next += interval
            commits[uid] = float(s.scalar(
                "UPDATE lhdiscord.users SET in_brig = true WHERE user_id = %d; "
                "SELECT extract(epoch FROM clock_timestamp())" % uid))
        strips = {}

        def arrived():
            for uid in commits:
                if len(strips.get(uid, ())) >= 2:
                    continue
                reqs = self.mock("GET", "/_mock/requests?since=%d&method=DELETE&path_prefix="
                                 "/api/v10/guilds/%s/members/%d/roles/" % (since, self.guild, USER_BASE + uid))
                strips[uid] = [r["t"] for r in reqs["requests"] if r["status"] == 204]
            return all(len(strips.get(u, ())) >= 2 for u in commits)
        wait_until(arrived, 120, "the strips of %d brigs to reach the mock" % len(commits), interval=0.2)
        return [(max(strips[u]) - commits[u]) * 1000.0 for u in commits]

    def figure7(self):
        n = 300 if self.quick else 100000
        m = 5 if self.quick else 30            # brigs measured, in each phase
        interval = 1.0 if self.quick else 4.0  # seconds between brigs
        warmup = 2.0 if self.quick else 10.0   # backlog running before measuring
        rank_role = ROLE_IDS["rank_jr_crew"]
        s = Session(self, "postgres", "lhd-bench-fig7")
        s.query("SET client_min_messages = warning; "
                "TRUNCATE lhdiscord.users, lhdiscord.role_state, lhdiscord.outbox CASCADE", timeout=300)
        # Users 1..n have rank jr_crew, whose role is not mapped yet (so the
        # mapping below queues n bulk convergences of one PUT each); users
        # n+1..n+2m have no rank (the change does not affect them): the
        # members to brig, m with the queue empty, m under the backlog.
        s.query(self.seed_sql(n + 2 * m, level="'traveler'",
                              rank="CASE WHEN i <= %d THEN 'jr_crew' ELSE 'none' END" % n)
                + """
SET session_replication_role = replica;
DELETE FROM lhdiscord.role_map WHERE key = 'rank_jr_crew';
UPDATE lhdiscord.role_state SET role_ids = array_remove(role_ids, '%s');
RESET session_replication_role;
""" % rank_role, timeout=900)
        s.query("VACUUM ANALYZE", timeout=600)
        self.check_role_state(s)
        self.mock_guild(n + 2 * m, [ROLE_IDS["traveler"], ROLE_IDS["verified"]])
        # Discord's limits (as figure 4), and the request record for arrival times.
        self.mock("POST", "/_mock/config", {"record": True, "record_limit": 2000000, "global_limit": 50,
                                            "buckets": {ROLE_BUCKET: {"limit": 50, "window": 1.0}}})
        self.worker_conf(global_rate_limit=50, max_concurrency=32, poll_interval=None)

        # Baseline: the same brig with an empty queue.
        base = self.fig7_brigs(s, range(n + 1, n + m + 1), interval)
        b50, b99 = percentile(base, 50), percentile(base, 99)
        out("  baseline (empty queue): %d brigs %.1f s apart, strip latency p50 %.1f ms, p99 %.1f ms, max %.1f ms"
            % (m, interval, b50, b99, max(base)))

        # The bulk backlog: one mapping, n convergences.
        t0 = time.monotonic()
        since = self.mock("GET", "/_mock/requests?since=999999999999&limit=1")["last_seq"]
        t_map = float(s.scalar(
            "BEGIN; SELECT lhdiscord.map_role('rank_jr_crew', '%s'); ANALYZE lhdiscord.outbox; COMMIT; "
            "SELECT extract(epoch FROM clock_timestamp())" % rank_role, timeout=900))
        queued = int(s.scalar("SELECT count(*) FROM lhdiscord.outbox WHERE state IN ('pending', 'in_flight')"))
        out("  bulk backlog: %d convergences queued by one map_role() in %.1f s" % (queued, time.monotonic() - t0))
        time.sleep(warmup)
        t_w0 = time.time()
        with Perf(self, "fig7"):
            lat = self.fig7_brigs(s, range(n + m + 1, n + 2 * m + 1), interval)
        t_w1 = time.time()
        left = int(s.scalar("SELECT count(*) FROM lhdiscord.outbox WHERE state IN ('pending', 'in_flight')"))
        try:
            lanes = s.query("SELECT DISTINCT lane, lane_backlog, round(lane_send_rate::numeric, 2), "
                            "date_trunc('second', lane_drain_estimate) FROM lhdiscord.outbox_stats "
                            "WHERE lane IS NOT NULL ORDER BY 1")
        except BenchError as err:          # a build without lanes: report, go on
            out("  outbox_stats has no lane columns: %s" % str(err).splitlines()[0])
            lanes = []
        reqs = self.mock("GET", "/_mock/requests?since=%d&path_prefix=/api/v10/" % since, timeout=300)["requests"]
        st = self.mock_stats()
        arrivals = [r["t"] for r in reqs if t_w0 <= r["t"] <= t_w1]
        limited = sum(1 for r in reqs if r["status"] == 429 and t_w0 <= r["t"] <= t_w1)
        util = len(arrivals) / max(1e-9, t_w1 - t_w0) / 50.0
        wmax = self.window_max(arrivals)
        wmax_all = self.window_max([r["t"] for r in reqs])
        p50, p99 = percentile(lat, 50), percentile(lat, 99)
        out("  under the backlog: %d brigs %.1f s apart over %.1f s (from %.0f s after the mapping), strip latency "
            "p50 %.1f ms, p99 %.1f ms, max %.1f ms; %d bulk jobs still queued at the end"
            % (m, interval, t_w1 - t_w0, t_w0 - t_map, p50, p99, max(lat), left))
        out("  meanwhile: %d requests reached the mock = %.2f/s = %.3f of the 50/s limit; max per one-second "
            "window %d (whole run since the mapping %d; mock max_per_second %d); %d 429s"
            % (len(arrivals), len(arrivals) / max(1e-9, t_w1 - t_w0), util, wmax, wmax_all,
               st["max_per_second"], limited))
        for row in lanes:
            out("  outbox_stats lane %s: backlog %s, send rate %s jobs/s, drain estimate %s" % tuple(row))
        out("  ratios to the empty-queue baseline: p50 %.2fx, p99 %.2fx" % (p50 / b50, p99 / b99))
        # Stop the backlog: drop what is pending, let the claimed jobs finish.
        s.query("DELETE FROM lhdiscord.outbox WHERE state = 'pending'", timeout=300)
        wait_until(lambda: s.scalar("SELECT count(*) FROM lhdiscord.outbox WHERE state = 'in_flight'") == "0",
                   60, "the claimed bulk jobs to finish", interval=0.2)
        s.close()
        self.mock("POST", "/_mock/reset", {"record": False})
        self.worker_conf(global_rate_limit=0)
        self.results.append(Result("7a", "brig-strip latency p99 ms under a %d-job bulk backlog at 50/s "
                                         "(empty-queue p99 as baseline)" % n,
                                   p99, b99, p99 / b99, "p99<2000ms", p99 < 2000.0))
        self.results.append(Result("7b", "utilisation of the 50/s limit while brigging (requests/s / 50)",
                                   util * 50.0, 50.0, util, ">=0.9", util >= 0.9))
        self.results.append(Result("7c", "server-side max requests per one-second window (limit as baseline)",
                                   wmax, 50, wmax / 50.0, "<=50", wmax <= 50))

    # ---- driver ----------------------------------------------------------------

    FIGURES = [("1", "figure1", "trigger overhead"), ("2", "figure2", "calls per change"),
               ("3", "figure3", "drain throughput and latency"), ("4", "figure4", "rate-limit utilisation"),
               ("6", "figure6", "member scan"), ("5", "figure5", "reconcile at scale"),
               ("7", "figure7", "brig-strip latency under a bulk backlog")]

    def run(self, only):
        t_start = time.monotonic()
        self.setup()
        self.machine()
        failed = []
        for num, method, title in self.FIGURES:
            if only and num not in only:
                continue
            out()
            out("figure %s: %s" % (num, title))
            t = time.monotonic()
            try:
                getattr(self, method)()
            except Exception as err:         # report, carry on with the others
                failed.append(num)
                out("  ERROR: %s" % err)
                if not isinstance(err, BenchError):
                    traceback.print_exc()
            out("  (figure %s took %.1f s)" % (num, time.monotonic() - t))
        out()
        out("summary (%s run, %.0f s):" % ("quick" if self.quick else "full", time.monotonic() - t_start))
        for r in sorted(self.results, key=lambda r: r.num):
            out(r.line())
        for num in failed:
            out("figure %s: ERROR (no numbers)" % num)
        if self.quick:
            out("(quick run: smoke sizes, targets not asserted)")
        self.admin.close()
        return 1 if failed else 0


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--work", required=True)
    p.add_argument("--socket", required=True)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--mock-port", type=int, required=True)
    p.add_argument("--mock-pid", type=int, required=True)
    p.add_argument("--bot-token", required=True)
    p.add_argument("--guild", required=True)
    p.add_argument("--lua", required=True)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--only", default="")
    args = p.parse_args()
    only = set(x.strip() for x in args.only.split(",") if x.strip())
    if "4" in only:
        only.add("3")                   # figure 4 reuses figure 3's users
    bench = Bench(args)
    try:
        return bench.run(only)
    except BenchError as err:
        out("ERROR: %s" % err)
        return 1


if __name__ == "__main__":
    sys.exit(main())
