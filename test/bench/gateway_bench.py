#!/usr/bin/python3
"""
gateway_bench.py - figure 8: how fast a change on Discord reaches a portal
decision through the Gateway worker, against the runbook's cadence, and how
many member events per second the Gateway worker ingests.

Run by test/bench/gateway (a cluster with lhdiscord.gateway = on and the
mock's Gateway). Prints

  figure 8: <name>: value=... baseline=... ratio=... target=... PASS|MISS

8a  decision latency p99 (s): a linked member's entitlement role removed or
    given back on the mock (control API) -> the commit of the decision (the
    commit timestamp of its audit row; one clock on one machine). Baseline: the runbook, a
    member scan and reconcile every 5 minutes (its fastest cadence): the
    change waits for the next tick (uniform over the 300 s) and then for the
    scan and reconcile, whose duration is measured here on the same guild.
8b  events ingested per second: a burst of role changes of members nobody
    linked (sent over 4 connections side by side), from the first change
    sent to the last one applied (worker_status.gateway_events). Baseline:
    the rate the producers sent them at (the ingest rate cannot exceed it).
"""

import argparse
import http.client
import json
import sys
import threading
import time

from bench import BenchError, Result, Session, percentile

ENT = "900000000000000131"
CADENCE = 300.0
PRODUCERS = 4       # control-API connections sending the burst side by side


class Ctx:
    """What bench.Session needs of its bench."""

    def __init__(self, socket, port):
        self.socket = socket
        self.port = port


class Mock:
    """The mock's control API over one keep-alive connection."""

    def __init__(self, port):
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)

    def call(self, method, path, body=None):
        data = json.dumps(body) if body is not None else None
        self.conn.request(method, path, body=data, headers={"content-type": "application/json"})
        resp = self.conn.getresponse()
        raw = resp.read()
        if resp.status >= 300:
            raise BenchError("mock %s %s: %s %s" % (method, path, resp.status, raw[:200]))
        return json.loads(raw) if raw else None


def wait(cond, timeout, what):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return
        time.sleep(0.005)
    raise BenchError("timed out waiting for " + what)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--socket", required=True)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--mock-port", type=int, required=True)
    p.add_argument("--guild", required=True)
    p.add_argument("--quick", action="store_true")
    args = p.parse_args()

    users = 20 if args.quick else 200
    changes = 20 if args.quick else 400
    burst = 200 if args.quick else 5000
    strangers = 1000 if args.quick else 10000
    guild = args.guild
    mock = Mock(args.mock_port)
    linked = ["93%016d" % i for i in range(1, users + 1)]
    mock.call("POST", "/_mock/guilds", {
        "id": guild, "auto_roles": True,
        "members": [{"id": m, "username": "u%d" % i, "roles": [ENT]} for i, m in enumerate(linked, 1)],
        "generate": {"count": strangers, "start_id": "940000000000000000", "roles": []}})

    s = Session(Ctx(args.socket, args.port), "postgres")
    s.query("""
        BEGIN;
        SET client_min_messages = warning;
        CREATE EXTENSION lhdiscord;
        SELECT lhdiscord.map_role('hauling.member', '%s');
        INSERT INTO lhdiscord.users (user_id, username, membership_level)
          SELECT g, 'u' || g, 'citizen' FROM generate_series(1, %d) g;
        SELECT count(lhdiscord.link_account(g, '93' || lpad(g::text, 16, '0'), 'u' || g))
          FROM generate_series(1, %d) g;
        COMMIT;""" % (ENT, users, users), timeout=300)
    status = lambda col: s.query("SELECT %s FROM lhdiscord.worker_status" % col)[0][0]
    wait(lambda: status("gateway_seeded") == "t", 120, "the Gateway's first listing")
    wait(lambda: s.query("SELECT count(*) FROM lhdiscord.users WHERE status = 'active'")[0][0] == str(users),
         30, "every user active")

    # 8a: one change at a time, alternately taking the role away and giving it back.
    lat = []
    for i in range(changes):
        uid = i % users + 1
        member = linked[uid - 1]
        remove = (i // users) % 2 == 0
        want = "suspended" if remove else "active"
        last = s.query("SELECT coalesce(max(id), 0) FROM lhdiscord.audit_log")[0][0]
        t0 = time.time()
        mock.call("DELETE" if remove else "PUT", "/_mock/members/%s/%s/roles/%s" % (guild, member, ENT))
        wait(lambda: s.query("SELECT status FROM lhdiscord.users WHERE user_id = %d" % uid)[0][0] == want,
             30, "the decision on user %d" % uid)
        # The commit of the decision (track_commit_timestamp), and its audit row.
        at, ev = s.query("SELECT extract(epoch FROM pg_xact_commit_timestamp(a.xmin)), "
                         "       a.after_json->'evidence'->>'event' FROM lhdiscord.audit_log a "
                         "WHERE a.id > %s AND a.action = 'entitlement.reconcile' AND a.subject_user_id = %d "
                         "ORDER BY a.id LIMIT 1" % (last, uid))[0]
        if ev != "GUILD_MEMBER_UPDATE":
            raise BenchError("the decision on user %d was not the Gateway's (evidence %r)" % (uid, ev))
        lat.append(float(at) - t0)
    p50, p99 = percentile(lat, 50), percentile(lat, 99)

    # The runbook's path on the same guild: a member scan, then reconcile.
    t0 = time.monotonic()
    snap = s.query("SELECT lhdiscord.request_member_scan()")[0][0]
    wait(lambda: s.query("SELECT complete FROM lhdiscord.member_snapshots WHERE id = %s" % snap)[0][0] == "t",
         300, "the member scan")
    s.query("SELECT count(*) FROM lhdiscord.reconcile()")
    scan = time.monotonic() - t0
    runbook_p50 = CADENCE * 0.50 + scan
    runbook_p99 = CADENCE * 0.99 + scan

    # 8b: a burst of role changes of members nobody linked.
    before = int(status("gateway_events"))

    def produce(k):
        conn = Mock(args.mock_port)
        for i in range(k, burst, PRODUCERS):
            member = "94%016d" % (i % strangers + 1)
            conn.call("PUT" if (i // strangers) % 2 == 0 else "DELETE",
                      "/_mock/members/%s/%s/roles/%s" % (guild, member, ENT))

    threads = [threading.Thread(target=produce, args=(k,)) for k in range(PRODUCERS)]
    t0 = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    sent = time.monotonic() - t0
    wait(lambda: int(status("gateway_events")) >= before + burst, 300, "the burst to be applied")
    took = time.monotonic() - t0
    rate, producer = burst / took, burst / sent
    s.close()

    print("  8a: %d decisions: p50 %.1f ms, p99 %.1f ms, max %.1f ms; runbook (scan + reconcile every "
          "%.0f s; one scan and reconcile of %d members took %.2f s): p50 %.0f s, p99 %.0f s"
          % (changes, p50 * 1000, p99 * 1000, max(lat) * 1000, CADENCE, users + strangers, scan,
             runbook_p50, runbook_p99))
    print("  8b: %d events applied in %.2f s (%.0f/s); the producer sent %.0f/s" % (burst, took, rate, producer))
    results = [
        Result("8a", "Discord change -> portal decision p99 (s)", p99, runbook_p99, p99 / runbook_p99,
               "p99 < 1 s", p99 < 1.0),
        Result("8b", "Gateway member events ingested per second", rate, producer, rate / producer,
               ">= 0.9 of the producer", rate >= 0.9 * producer),
    ]
    for r in results:
        print(r.line())
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except BenchError as err:
        print("ERROR: %s" % err)
        sys.exit(1)
