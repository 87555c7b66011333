#!/usr/bin/python3
"""
Self-test of the mock's Gateway (gateway.py; unittest + asyncio + Debian's
python3-websockets as the client).

Starts mock_discord.py with --gateway-port 0 on loopback and drives the
Gateway the way a bot would: HELLO/IDENTIFY/READY/GUILD_CREATE, heartbeats
and ACKs, member events from control-API and REST changes, RESUME with
replay, refused and expired resumes, every fault of /_mock/gateway/faults,
the close codes, session_start_limit and the IDENTIFY rate limit, the
command rate limit, member chunking (100,000 members, timed, with the
mock's memory bounded), and that mock_discord.py runs without websockets
as long as the Gateway is off. selftest.py runs this file as its last test.
Without python3-websockets it fails (it does not skip). Run:
    /usr/bin/python3 test/mock_discord/gateway_selftest.py [-v]
"""

import asyncio
import http.client
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import unittest

try:
    import websockets
except ImportError as err:
    sys.exit("gateway_selftest: FAIL: python3-websockets is missing (%s); "
             "apt-get install python3-websockets" % err)

HERE = os.path.dirname(os.path.abspath(__file__))
SERVER = os.path.join(HERE, "mock_discord.py")
PYTHON = sys.executable         # the interpreter that has websockets

BOT_TOKEN = "MTE4NzM0MzcxNTIwOTQwODUxMg.GSelft.est-gateway-token-5e2d"
UA = "DiscordBot (https://example.invalid, 0.1)"
GUILD = "1100000000000000001"
GUILD2 = "1100000000000000002"
ROLE_A = "1200000000000000001"
ROLE_B = "1200000000000000002"
USER_A = "300000000000000001"
USER_B = "300000000000000002"
USER_C = "300000000000000003"
STRANGER = "399999999999999999"
PROPS = {"os": "linux", "browser": "lhdiscord", "device": "lhdiscord"}
QUERY = "/?v=10&encoding=json"

MOCK = None
TMPDIR = None


class Mock:
    """A mock_discord.py process with the Gateway on."""

    def __init__(self, tmpdir, name, gateway=True, env=None):
        self.port_file = os.path.join(tmpdir, name + ".port")
        self.gw_file = os.path.join(tmpdir, name + ".gwport")
        self.err_path = os.path.join(tmpdir, name + ".stderr")
        self.err = open(self.err_path, "w")
        cmd = [PYTHON, SERVER, "--host", "127.0.0.1", "--port", "0",
               "--port-file", self.port_file, "--bot-token", BOT_TOKEN]
        if gateway:
            cmd += ["--gateway-port", "0", "--gateway-port-file", self.gw_file]
        self.proc = subprocess.Popen(cmd, stderr=self.err, env=env)
        self.port = self.wait_port(self.port_file)
        self.gw_port = self.wait_port(self.gw_file) if gateway else None

    def wait_port(self, path, timeout=10.0):
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError("mock exited: %s" % self.stderr())
            try:
                with open(path) as fp:
                    text = fp.read()
                if text.strip():
                    return int(text)
            except FileNotFoundError:
                pass
            time.sleep(0.02)
        raise RuntimeError("no port file %s" % path)

    def request(self, method, path, body=None, headers=None):
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        try:
            data = json.dumps(body).encode() if body is not None else None
            conn.request(method, path, data, headers or {"Content-Type": "application/json"})
            resp = conn.getresponse()
            raw = resp.read()
            return resp.status, json.loads(raw) if raw else None
        finally:
            conn.close()

    def ctl(self, method, path, body=None, expect=200):
        status, obj = self.request(method, path, body)
        if status != expect:
            raise AssertionError("%s %s -> %d %r" % (method, path, status, obj))
        return obj

    def api(self, method, path, body=None, auth=True):
        headers = {"User-Agent": UA, "Content-Type": "application/json"}
        if auth:
            headers["Authorization"] = "Bot " + BOT_TOKEN
        if body is None and method in ("PUT", "POST"):
            body = {}
        return self.request(method, "/api/v10" + path, body, headers)

    def rss_kib(self, field="VmRSS"):
        with open("/proc/%d/status" % self.proc.pid) as fp:
            for line in fp:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
        return 0

    def stderr(self):
        with open(self.err_path) as fp:
            return fp.read()

    def stop(self):
        """SIGTERM; returns the exit status. A traceback in the mock's
        stderr (a handler that crashed) fails the run."""
        self.proc.send_signal(signal.SIGTERM)
        rc = self.proc.wait(timeout=10)
        self.err.close()
        text = self.stderr()
        if "Traceback" in text or "Error" in text:
            raise AssertionError("the mock wrote errors:\n" + text[-3000:])
        return rc


def setUpModule():
    global MOCK, TMPDIR
    TMPDIR = tempfile.mkdtemp(prefix="mock_gateway_selftest_")
    MOCK = Mock(TMPDIR, "main")


def tearDownModule():
    if MOCK is not None:
        MOCK.stop()
    shutil.rmtree(TMPDIR, ignore_errors=True)


class Closed(Exception):
    def __init__(self, code, reason):
        super().__init__("closed %s %s" % (code, reason))
        self.code, self.reason = code, reason


class Client:
    """A Gateway client: raw payloads in and out, the last seq kept."""

    def __init__(self, ws):
        self.ws = ws
        self.seq = None
        self.session_id = None
        self.resume_url = None

    @classmethod
    async def open(cls, url, query=QUERY, hello=True):
        ws = await websockets.connect(url + query, compression=None, ping_interval=None,
                                      max_size=1 << 24, close_timeout=1, open_timeout=5)
        self = cls(ws)
        if hello:
            self.hello = await self.expect(op=10)
        return self

    async def send(self, op, d=None):
        await self.ws.send(json.dumps({"op": op, "d": d}))

    async def recv(self, timeout=5.0):
        try:
            text = await asyncio.wait_for(self.ws.recv(), timeout)
        except websockets.ConnectionClosed as err:
            rcvd = err.rcvd
            raise Closed(rcvd.code if rcvd else 1006, rcvd.reason if rcvd else "")
        payload = json.loads(text)
        if payload.get("s") is not None:
            self.seq = payload["s"]
        return payload

    async def expect(self, op=0, t=None, timeout=5.0):
        payload = await self.recv(timeout)
        if payload["op"] != op or (t is not None and payload["t"] != t):
            raise AssertionError("expected op %s %s, got %r" % (op, t, payload)[:600])
        return payload

    async def silence(self, timeout=0.3):
        """Assert nothing arrives within timeout."""
        try:
            payload = await self.recv(timeout)
        except asyncio.TimeoutError:
            return
        raise AssertionError("unexpected %r" % (payload,))

    async def closed(self, timeout=5.0):
        """Read until the connection closes; returns (code, reason)."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                await self.recv(max(0.01, deadline - time.monotonic()))
            except Closed as err:
                return err.code, err.reason

    async def identify(self, intents=3, token=BOT_TOKEN, **extra):
        d = dict({"token": token, "properties": PROPS, "intents": intents}, **extra)
        await self.send(2, d)
        ready = await self.expect(0, "READY")
        self.session_id = ready["d"]["session_id"]
        self.resume_url = ready["d"]["resume_gateway_url"]
        return ready

    async def resume(self, session_id, seq, token=BOT_TOKEN):
        await self.send(6, {"token": token, "session_id": session_id, "seq": seq})

    def abort(self):
        self.ws.transport.abort()

    async def close(self, code=1000):
        await self.ws.close(code)


class GatewayCase(unittest.IsolatedAsyncioTestCase):
    mock = None

    async def asyncSetUp(self):
        self.m = self.mock or MOCK
        self.clients = []
        self.m.ctl("POST", "/_mock/reset")
        # Tests identify often; the IDENTIFY window has a test of its own.
        self.m.ctl("POST", "/_mock/gateway/config", {"identify_window": 0})
        self.m.ctl("POST", "/_mock/guilds", {
            "id": GUILD, "roles": [ROLE_A, ROLE_B],
            "members": [{"id": USER_A, "username": "alice", "roles": [ROLE_A]},
                        {"id": USER_B, "username": "bob", "roles": []}]})
        self.url = "ws://127.0.0.1:%d" % self.m.gw_port

    async def asyncTearDown(self):
        for c in self.clients:
            c.abort()

    async def connect(self, url=None, **kw):
        c = await Client.open(url or self.url, **kw)
        self.clients.append(c)
        return c

    async def ready(self, **kw):
        """A connected, identified client that has read READY and GUILD_CREATE."""
        c = await self.connect()
        await c.identify(**kw)
        await c.expect(0, "GUILD_CREATE")
        return c

    def stats(self):
        return self.m.ctl("GET", "/_mock/gateway/stats")

    async def until(self, pred, timeout=5.0):
        """Poll the stats until pred(stats) holds; returns them."""
        deadline = time.monotonic() + timeout
        while True:
            st = self.stats()
            if pred(st):
                return st
            if time.monotonic() > deadline:
                self.fail("condition not reached; stats: %s" % json.dumps(st)[:1500])
            await asyncio.sleep(0.02)

    def fault(self, **spec):
        return self.m.ctl("POST", "/_mock/gateway/faults", spec)

    def config(self, **cfg):
        return self.m.ctl("POST", "/_mock/gateway/config", cfg)

    async def assertCloses(self, c, code, timeout=5.0):
        got, reason = await c.closed(timeout)
        self.assertEqual(got, code, reason)
        return reason


class A_RestAndHandshake(GatewayCase):

    async def test_gateway_bot(self):
        status, body = self.m.api("GET", "/gateway/bot")
        self.assertEqual(status, 200)
        self.assertEqual(body["url"], self.url)
        self.assertEqual(body["shards"], 1)
        self.assertEqual(set(body["session_start_limit"]),
                         {"total", "remaining", "reset_after", "max_concurrency"})
        self.assertEqual(self.m.api("GET", "/gateway/bot", auth=False)[0], 401)
        self.assertEqual(self.m.api("GET", "/gateway", auth=False), (200, {"url": self.url}))
        info = self.m.ctl("GET", "/_mock/gateway")
        self.assertEqual(info["url"], self.url)
        self.assertNotEqual(info["resume_url"], self.url)

    async def test_hello_identify_ready_guild_create(self):
        self.config(heartbeat_interval=1234)
        c = await self.connect()
        self.assertEqual(c.hello, {"op": 10, "d": {"heartbeat_interval": 1234},
                                   "s": None, "t": None})
        ready = await c.identify(shard=[0, 1])
        d = ready["d"]
        self.assertEqual(ready["s"], 1)
        self.assertEqual(d["v"], 10)
        self.assertRegex(d["session_id"], r"^[0-9a-f]{32}$")
        self.assertEqual(d["resume_gateway_url"], self.m.ctl("GET", "/_mock/gateway")["resume_url"])
        self.assertTrue(d["user"]["bot"])
        self.assertEqual(d["guilds"], [{"id": GUILD, "unavailable": True}])
        self.assertEqual(d["shard"], [0, 1])
        self.assertIn("id", d["application"])
        gc = await c.expect(0, "GUILD_CREATE")
        self.assertEqual(gc["s"], 2)
        g = gc["d"]
        self.assertEqual((g["id"], g["member_count"], g["large"], g["unavailable"]),
                         (GUILD, 2, False, False))
        self.assertEqual(sorted(m["user"]["id"] for m in g["members"]), [USER_A, USER_B])
        self.assertIn(GUILD, [r["id"] for r in g["roles"]])     # @everyone
        await c.silence()

    async def test_large_guild_omits_members(self):
        self.m.ctl("POST", "/_mock/guilds", {"id": GUILD2, "generate": {"count": 60}})
        c = await self.connect()
        await c.identify()
        seen = {}
        for _ in range(2):
            g = (await c.expect(0, "GUILD_CREATE"))["d"]
            seen[g["id"]] = g
        self.assertEqual((seen[GUILD2]["large"], seen[GUILD2]["member_count"],
                          seen[GUILD2]["members"]), (True, 60, []))
        c2 = await self.connect()
        await c2.identify(large_threshold=100)
        for _ in range(2):
            g = (await c2.expect(0, "GUILD_CREATE"))["d"]
            if g["id"] == GUILD2:
                self.assertEqual((g["large"], len(g["members"])), (False, 60))

    async def test_heartbeat_and_ack(self):
        c = await self.connect()
        await c.send(1, None)                   # allowed before IDENTIFY
        self.assertEqual(await c.expect(11), {"op": 11, "d": None, "s": None, "t": None})
        await c.identify()
        await c.expect(0, "GUILD_CREATE")
        await c.send(1, c.seq)
        await c.expect(11)
        st = self.stats()
        self.assertEqual((st["heartbeats"], st["heartbeat_acks"]), (2, 2))
        self.assertEqual(st["commands"], {"1": 2, "2": 1})
        self.assertEqual(st["connections"][0]["heartbeats"], 2)
        self.fault(action="heartbeat")          # the Gateway asks for one
        await c.expect(1)

    async def test_hello_delay(self):
        self.config(hello_delay_ms=400)
        t0 = time.monotonic()
        await self.connect()
        self.assertGreaterEqual(time.monotonic() - t0, 0.35)

    async def test_query_checked(self):
        c = await self.connect(query="/?v=9&encoding=json", hello=False)
        await self.assertCloses(c, 4012)
        c = await self.connect(query="/?v=10&encoding=etf", hello=False)
        await self.assertCloses(c, 4002)

    async def test_heartbeat_timeout_4009(self):
        self.config(heartbeat_interval=200)     # closes after 1.5 x 200 ms
        c = await self.connect()
        t0 = time.monotonic()
        await c.identify()
        await self.assertCloses(c, 4009, timeout=5)
        self.assertLess(time.monotonic() - t0, 3.0)     # 0.3 s unloaded
        self.assertEqual(self.stats()["heartbeat_timeouts"], 1)
        r = await self.connect()                # a 4009 session cannot be resumed
        await r.resume(c.session_id, c.seq)
        self.assertIs((await r.expect(9))["d"], False)


class B_CloseCodes(GatewayCase):

    async def closes_with(self, code, send):
        c = await self.connect()
        await send(c)
        return await self.assertCloses(c, code)

    async def test_identify_errors(self):
        identify = lambda **d: lambda c: c.send(2, dict(        # noqa: E731
            {"token": BOT_TOKEN, "properties": PROPS, "intents": 3}, **d))
        await self.closes_with(4004, identify(token="wrong"))
        await self.closes_with(4002, identify(properties=None))
        await self.closes_with(4010, identify(shard=[1, 1]))
        await self.closes_with(4013, identify(intents=1 << 30))
        reason = await self.closes_with(4013, identify(intents=1))     # no GUILD_MEMBERS
        self.assertIn("requires", reason)
        self.config(privileged_intents=0)      # GUILD_MEMBERS not enabled in the portal
        await self.closes_with(4014, identify(intents=3))
        self.config(privileged_intents=1 << 1)
        await self.closes_with(4014, identify(intents=3 | 1 << 8))     # presences
        st = self.stats()
        self.assertEqual(st["last_close_code"], 4014)
        self.assertEqual(st["close_codes"]["4013"], 2)
        self.assertEqual(st["last_close"]["by"], "server")

    async def test_payload_errors(self):
        async def raw(c, text):
            await c.ws.send(text)
        await self.closes_with(4002, lambda c: raw(c, "{not json"))
        await self.closes_with(4002, lambda c: raw(c, "[1]"))
        await self.closes_with(4002, lambda c: raw(c, b"\x00binary"))
        await self.closes_with(4002, lambda c: raw(c, json.dumps({"op": 1, "d": None,
                                                               "x": "y" * 5000})))
        await self.closes_with(4002, lambda c: c.send(1, "seq"))
        await self.closes_with(4001, lambda c: c.send(99, None))
        await self.closes_with(4003, lambda c: c.send(8, {"guild_id": GUILD, "query": "",
                                                         "limit": 0}))

    async def test_already_authenticated(self):
        c = await self.ready()
        await c.send(2, {"token": BOT_TOKEN, "properties": PROPS, "intents": 3})
        await self.assertCloses(c, 4005)
        c = await self.ready()
        await c.resume(c.session_id, c.seq)
        await self.assertCloses(c, 4005)

    async def test_command_rate_limit_120_per_60s(self):
        c = await self.connect()
        for _ in range(120):
            await c.send(1, None)
        for _ in range(120):
            await c.expect(11)
        await c.send(1, None)
        await self.assertCloses(c, 4008)
        st = self.stats()
        self.assertEqual((st["rate_limited"], st["commands"]["1"]), (1, 120))
        self.config(command_limit={"count": 3, "window": 60})
        c = await self.ready()                  # IDENTIFY is the first command
        await c.send(1, c.seq)
        await c.send(1, c.seq)
        await c.expect(11)
        await c.expect(11)
        await c.send(1, c.seq)
        await self.assertCloses(c, 4008)


class C_MemberEvents(GatewayCase):

    async def test_control_api_changes(self):
        a, b = await self.ready(), await self.ready()
        base = a.seq
        self.m.ctl("POST", "/_mock/members", {"guild_id": GUILD, "id": USER_C,
                                              "username": "carol", "roles": [ROLE_B]})
        self.m.ctl("POST", "/_mock/members", {"guild_id": GUILD, "id": USER_C,
                                              "roles": [ROLE_A, ROLE_B], "nick": "C"})
        self.m.ctl("POST", "/_mock/members", {"guild_id": GUILD, "id": USER_C,
                                              "roles": [ROLE_A, ROLE_B], "nick": "C"})
        self.m.ctl("DELETE", "/_mock/members/%s/%s/roles/%s" % (GUILD, USER_A, ROLE_A))
        self.m.ctl("PUT", "/_mock/members/%s/%s/roles/%s" % (GUILD, USER_B, ROLE_B))
        self.m.ctl("DELETE", "/_mock/members/%s/%s" % (GUILD, USER_C))
        for c in (a, b):
            add = await c.expect(0, "GUILD_MEMBER_ADD")
            self.assertEqual(add["s"], base + 1)
            self.assertEqual((add["d"]["guild_id"], add["d"]["user"]["id"],
                              add["d"]["user"]["username"], add["d"]["roles"]),
                             (GUILD, USER_C, "carol", [ROLE_B]))
            for key in ("joined_at", "deaf", "mute", "nick", "flags", "pending"):
                self.assertIn(key, add["d"])
            upd = await c.expect(0, "GUILD_MEMBER_UPDATE")     # the repeat sent nothing
            self.assertEqual((upd["s"], upd["d"]["roles"], upd["d"]["nick"]),
                             (base + 2, [ROLE_A, ROLE_B], "C"))
            self.assertEqual(upd["d"]["joined_at"], add["d"]["joined_at"])
            upd = await c.expect(0, "GUILD_MEMBER_UPDATE")
            self.assertEqual((upd["d"]["user"]["id"], upd["d"]["roles"]), (USER_A, []))
            upd = await c.expect(0, "GUILD_MEMBER_UPDATE")
            self.assertEqual((upd["d"]["user"]["id"], upd["d"]["roles"]), (USER_B, [ROLE_B]))
            rem = await c.expect(0, "GUILD_MEMBER_REMOVE")
            self.assertEqual(rem["s"], base + 5)
            self.assertEqual(set(rem["d"]), {"guild_id", "user"})
            self.assertEqual((rem["d"]["guild_id"], rem["d"]["user"]["id"]), (GUILD, USER_C))
            await c.silence(0.2)
        self.assertEqual(self.stats()["dispatches"]["GUILD_MEMBER_UPDATE"], 6)

    async def test_rest_changes(self):
        c = await self.ready()
        path = "/guilds/%s/members/%s/roles/%s" % (GUILD, USER_B, ROLE_A)
        self.assertEqual(self.m.api("PUT", path)[0], 204)
        upd = await c.expect(0, "GUILD_MEMBER_UPDATE")
        self.assertEqual((upd["d"]["user"]["id"], upd["d"]["roles"]), (USER_B, [ROLE_A]))
        self.assertEqual(self.m.api("PUT", path)[0], 204)        # no change, no event
        self.assertEqual(self.m.api("DELETE", path)[0], 204)
        upd = await c.expect(0, "GUILD_MEMBER_UPDATE")
        self.assertEqual(upd["d"]["roles"], [])
        tok = self.m.ctl("POST", "/_mock/oauth/tokens",
                         {"user_id": USER_C, "scope": "identify guilds.join"})
        status, _ = self.m.api("PUT", "/guilds/%s/members/%s" % (GUILD, USER_C),
                               {"access_token": tok["access_token"], "roles": [ROLE_B]})
        self.assertEqual(status, 201)
        add = await c.expect(0, "GUILD_MEMBER_ADD")
        self.assertEqual((add["d"]["user"]["id"], add["d"]["roles"]), (USER_C, [ROLE_B]))
        await c.silence(0.2)

    async def test_intents_filter_events(self):
        self.config(required_intents=1)
        c = await self.ready(intents=1)
        self.m.ctl("DELETE", "/_mock/members/%s/%s" % (GUILD, USER_B))
        await c.silence(0.2)
        await c.send(8, {"guild_id": GUILD, "query": "", "limit": 0})
        await self.assertCloses(c, 4013)

    async def test_guilds_and_reset(self):
        c = await self.ready()
        self.m.ctl("POST", "/_mock/guilds", {"id": GUILD2, "generate": {"count": 3}})
        g = await c.expect(0, "GUILD_CREATE")
        self.assertEqual((g["d"]["id"], g["d"]["member_count"]), (GUILD2, 3))
        self.m.ctl("POST", "/_mock/guilds", {"id": GUILD2, "generate": {"count": 4}})
        self.assertEqual((await c.expect(0, "GUILD_DELETE"))["d"],
                         {"id": GUILD2, "unavailable": True})
        self.assertEqual((await c.expect(0, "GUILD_CREATE"))["d"]["member_count"], 4)
        self.m.ctl("POST", "/_mock/reset")
        gone = {(await c.expect(0, "GUILD_DELETE"))["d"]["id"] for _ in range(2)}
        self.assertEqual(gone, {GUILD, GUILD2})
        st = self.stats()                       # counters start again
        self.assertEqual((st["identifies"], st["connections_open"]), (0, 1))

    async def test_raw_dispatch(self):
        c = await self.ready()
        out = self.m.ctl("POST", "/_mock/gateway/dispatch",
                         {"t": "GUILD_MEMBER_UPDATE", "d": {"guild_id": GUILD}})
        self.assertEqual(out["sessions"], [c.session_id])
        ev = await c.expect(0, "GUILD_MEMBER_UPDATE")
        self.assertEqual(ev["d"], {"guild_id": GUILD})


class D_Resume(GatewayCase):

    async def change_members(self, n):
        for i in range(n):
            self.m.ctl("POST", "/_mock/members", {
                "guild_id": GUILD, "id": str(310000000000000000 + i), "roles": [ROLE_A]})

    async def test_resume_replays_missed_events(self):
        c = await self.ready()
        seen = c.seq
        self.fault(action="drop")
        self.assertEqual(await c.closed(), (1006, ""))       # no close frame
        await self.change_members(3)
        st = await self.until(lambda st: not st["sessions"][0]["connected"])
        self.assertEqual(st["last_close"]["by"], "drop")
        r = await self.connect(c.resume_url)
        await r.resume(c.session_id, seen)
        for i in range(3):
            ev = await r.expect(0, "GUILD_MEMBER_ADD")
            self.assertEqual(ev["s"], seen + 1 + i)
        resumed = await r.expect(0, "RESUMED")
        self.assertEqual(resumed["s"], seen + 4)
        self.m.ctl("DELETE", "/_mock/members/%s/%s" % (GUILD, USER_B))
        self.assertEqual((await r.expect(0, "GUILD_MEMBER_REMOVE"))["s"], seen + 5)
        st = self.stats()
        self.assertEqual((st["resumes"], st["replayed"], st["identifies"]), (1, 3, 1))
        self.assertEqual([x["url"] for x in st["connections"]], ["resume"])
        await r.send(1, r.seq)
        await r.expect(11)

    async def test_resume_after_client_vanishes(self):
        c = await self.ready()
        c.abort()                               # the client side vanishes
        await self.until(lambda st: st["last_close"] and st["last_close"]["by"] == "lost")
        await self.change_members(1)
        r = await self.connect(c.resume_url)
        await r.resume(c.session_id, c.seq)
        await r.expect(0, "GUILD_MEMBER_ADD")
        await r.expect(0, "RESUMED")

    async def test_client_close_1000_ends_session(self):
        c = await self.ready()
        await c.close(1000)
        await self.until(lambda st: st["last_close"] and st["last_close"]["by"] == "client")
        r = await self.connect()
        await r.resume(c.session_id, c.seq)
        self.assertIs((await r.expect(9))["d"], False)

    async def test_refused_resume_then_identify(self):
        c = await self.ready()
        self.fault(action="drop")
        await c.closed()
        self.assertEqual(self.fault(action="refuse_resume")["refuse_resumes"], 1)
        r = await self.connect(c.resume_url)
        await r.resume(c.session_id, c.seq)
        self.assertIs((await r.expect(9))["d"], False)
        await r.identify()                      # a fresh session on the same socket
        await r.expect(0, "GUILD_CREATE")
        st = self.stats()
        self.assertEqual((st["resumes_refused"], st["identifies"], st["resumes"]), (1, 2, 0))
        self.assertIn("refuse_resume", st["resume_refusals"][0]["reason"])
        r2 = await self.connect()               # the refused session is gone for good
        await r2.resume(c.session_id, c.seq)
        self.assertIs((await r2.expect(9))["d"], False)

    async def test_buffer_overflow_refuses_resume(self):
        self.config(resume_buffer=3)
        c = await self.ready()
        self.fault(action="drop")
        await c.closed()
        await self.change_members(5)
        r = await self.connect()
        await r.resume(c.session_id, c.seq)
        self.assertIs((await r.expect(9))["d"], False)
        self.assertIn("no longer buffered", self.stats()["resume_refusals"][0]["reason"])

    async def test_expired_session(self):
        self.config(resume_timeout=0.2)
        c = await self.ready()
        self.fault(action="drop")
        await c.closed()
        await asyncio.sleep(0.4)
        r = await self.connect()
        await r.resume(c.session_id, c.seq)
        self.assertIs((await r.expect(9))["d"], False)

    async def test_bad_resumes(self):
        c = await self.ready()
        r = await self.connect()
        await r.resume("0" * 32, 1)
        self.assertIs((await r.expect(9))["d"], False)
        r = await self.connect()
        await r.resume(c.session_id, c.seq, token="wrong")
        await self.assertCloses(r, 4004)
        r = await self.connect()
        await r.resume(c.session_id, c.seq + 10)
        await self.assertCloses(r, 4007)

    async def test_resume_takes_over_a_zombie(self):
        c = await self.ready()
        self.fault(action="mute", session_id=c.session_id)
        self.m.ctl("DELETE", "/_mock/members/%s/%s" % (GUILD, USER_B))
        await c.silence(0.2)                    # muted: nothing arrives
        seen = c.seq
        r = await self.connect(c.resume_url)
        await r.resume(c.session_id, seen)      # while the zombie is still open
        self.assertEqual((await r.expect(0, "GUILD_MEMBER_REMOVE"))["s"], seen + 1)
        await r.expect(0, "RESUMED")
        self.assertEqual((await c.closed())[0], 1006)


class E_Faults(GatewayCase):

    async def test_close_with_code(self):
        c = await self.ready()
        self.fault(action="close", code=4000, reason="mock says bye")
        self.assertEqual(await c.closed(), (4000, "mock says bye"))
        r = await self.connect(c.resume_url)    # 4000 keeps the session
        await r.resume(c.session_id, c.seq)
        await r.expect(0, "RESUMED")
        self.fault(action="close", code=4000, resumable=False)
        await self.assertCloses(r, 4000)
        r2 = await self.connect()
        await r2.resume(c.session_id, r.seq)
        self.assertIs((await r2.expect(9))["d"], False)
        for code in (4004, 4014):
            c = await self.ready()
            self.fault(action="close", code=code)
            await self.assertCloses(c, code)
        self.assertEqual(self.stats()["last_close_code"], 4014)

    async def test_reconnect(self):
        c = await self.ready()
        out = self.fault(action="reconnect")
        self.assertEqual(len(out["affected"]), 1)
        self.assertEqual(await c.expect(7), {"op": 7, "d": None, "s": None, "t": None})

    async def test_invalid_session(self):
        c = await self.ready()
        self.fault(action="invalid_session", resumable=True)
        self.assertIs((await c.expect(9))["d"], True)
        await c.close(4000)
        r = await self.connect(c.resume_url)
        await r.resume(c.session_id, c.seq)
        await r.expect(0, "RESUMED")
        self.fault(action="invalid_session")    # d false: the session is forgotten
        self.assertIs((await r.expect(9))["d"], False)
        await r.send(8, {"guild_id": GUILD, "query": "", "limit": 0})
        await self.assertCloses(r, 4003)

    async def test_stop_and_resume_acks(self):
        c = await self.ready()
        other = await self.ready()
        self.fault(action="stop_acks", session_id=c.session_id)
        await c.send(1, c.seq)
        await c.silence(0.3)
        await other.send(1, other.seq)          # only the target stops
        await other.expect(11)
        self.fault(action="resume_acks", connection_id=self.stats()["connections"][0]["id"])
        await c.send(1, c.seq)
        await c.expect(11)
        st = self.stats()
        self.assertEqual((st["heartbeats"], st["heartbeat_acks"]), (3, 2))
        self.config(ack_heartbeats=False)       # every connection
        await other.send(1, other.seq)
        await other.silence(0.3)

    async def test_mute_then_resume_replays(self):
        c = await self.ready()
        self.fault(action="mute")
        self.m.ctl("DELETE", "/_mock/members/%s/%s" % (GUILD, USER_B))
        await c.send(1, c.seq)
        await c.silence(0.3)
        self.fault(action="unmute")
        self.m.ctl("DELETE", "/_mock/members/%s/%s" % (GUILD, USER_A))
        ev = await c.expect(0, "GUILD_MEMBER_REMOVE")
        self.assertEqual(ev["d"]["user"]["id"], USER_A)
        self.fault(action="drop")
        await c.closed()
        r = await self.connect(c.resume_url)
        await r.resume(c.session_id, c.seq - 2)     # the muted one is replayed
        self.assertEqual((await r.expect(0, "GUILD_MEMBER_REMOVE"))["d"]["user"]["id"], USER_B)
        await r.expect(0, "GUILD_MEMBER_REMOVE")
        await r.expect(0, "RESUMED")

    async def test_counters_and_timestamps(self):
        t0 = time.time()
        a = await self.ready()
        await a.send(1, a.seq)
        await a.expect(11)
        b = await self.ready()
        await b.send(8, {"guild_id": GUILD, "query": "", "limit": 0})
        await b.expect(0, "GUILD_MEMBERS_CHUNK")
        await b.close(4000)
        st = await self.until(lambda st: st["connections_open"] == 1)
        self.assertEqual((st["connections_total"], st["connections_open"], st["identifies"]),
                         (2, 1, 2))
        self.assertEqual(st["commands"], {"1": 1, "2": 2, "8": 1})
        self.assertEqual(len(st["identify_times"]), 2)
        self.assertTrue(t0 <= st["identify_times"][0] <= st["identify_times"][1] <= time.time())
        self.assertEqual(len(st["connection_times"]), 2)
        self.assertEqual((st["last_close_code"], st["last_close"]["by"]), (4000, "client"))
        self.assertEqual(st["chunk_requests"], 1)
        self.assertEqual(self.m.ctl("DELETE", "/_mock/gateway/stats")["identifies"], 0)

    async def test_bad_control_input(self):
        self.assertEqual(self.m.request("POST", "/_mock/gateway/faults",
                                        {"action": "explode"})[0], 400)
        self.assertEqual(self.m.request("POST", "/_mock/gateway/config",
                                        {"heartbeat": 1})[0], 400)
        self.assertEqual(self.m.request("POST", "/_mock/gateway/config",
                                        {"heartbeat_interval": "x"})[0], 400)
        self.assertEqual(self.m.request("GET", "/_mock/gateway/nope")[0], 404)
        self.assertEqual(self.m.request("POST", "/_mock/gateway/stats")[0], 405)


class F_Limits(GatewayCase):

    async def test_session_start_limit(self):
        self.config(session_start_limit={"total": 5, "remaining": 2})
        limit = lambda: self.m.api("GET", "/gateway/bot")[1]["session_start_limit"]  # noqa: E731
        self.assertEqual(limit()["remaining"], 2)
        await self.ready()
        self.assertEqual(limit()["remaining"], 1)
        await self.ready()
        self.assertEqual(limit()["remaining"], 0)
        c = await self.connect()
        await c.send(2, {"token": BOT_TOKEN, "properties": PROPS, "intents": 3})
        self.assertIs((await c.expect(9))["d"], False)
        st = self.stats()
        self.assertEqual((st["identifies"], st["identifies_refused"]["start_limit"]), (2, 1))
        self.config(session_start_limit={"reset_after": 200})
        self.assertLessEqual(limit()["reset_after"], 200)
        await asyncio.sleep(0.3)
        self.assertEqual(limit()["remaining"], 5)
        await c.identify()

    async def test_identify_rate_limit(self):
        self.config(identify_window=5)          # max_concurrency 1 per 5 s
        await self.ready()
        c = await self.connect()
        await c.send(2, {"token": BOT_TOKEN, "properties": PROPS, "intents": 3})
        self.assertIs((await c.expect(9))["d"], False)
        st = self.stats()
        self.assertEqual((st["identifies"], st["identifies_refused"]["rate_limited"]), (1, 1))
        self.config(session_start_limit={"max_concurrency": 2})
        await c.identify()
        times = self.stats()["identify_times"]
        self.assertEqual(len(times), 2)


class G_Chunking(GatewayCase):

    async def test_small_requests(self):
        c = await self.ready()
        await c.send(8, {"guild_id": GUILD, "query": "", "limit": 0, "nonce": "n-1"})
        ch = (await c.expect(0, "GUILD_MEMBERS_CHUNK"))["d"]
        self.assertEqual((ch["guild_id"], ch["chunk_index"], ch["chunk_count"], ch["nonce"]),
                         (GUILD, 0, 1, "n-1"))
        self.assertEqual(sorted(m["user"]["id"] for m in ch["members"]), [USER_A, USER_B])
        await c.send(8, {"guild_id": GUILD, "user_ids": [USER_A, STRANGER], "nonce": "x" * 33})
        ch = (await c.expect(0, "GUILD_MEMBERS_CHUNK"))["d"]
        self.assertEqual([m["user"]["id"] for m in ch["members"]], [USER_A])
        self.assertEqual(ch["not_found"], [STRANGER])
        self.assertNotIn("nonce", ch)           # over 32 bytes: ignored
        await c.send(8, {"guild_id": GUILD, "query": "AL", "limit": 10, "presences": True})
        ch = (await c.expect(0, "GUILD_MEMBERS_CHUNK"))["d"]
        self.assertEqual(([m["user"]["username"] for m in ch["members"]], ch["presences"]),
                         (["alice"], []))
        await c.send(8, {"guild_id": GUILD2, "query": "", "limit": 0})
        ch = (await c.expect(0, "GUILD_MEMBERS_CHUNK"))["d"]
        self.assertEqual((ch["members"], ch["chunk_count"]), ([], 1))
        await c.send(8, {"query": "", "limit": 0})
        await self.assertCloses(c, 4002)

    async def test_chunk_size(self):
        self.config(chunk_size=2)
        self.m.ctl("POST", "/_mock/guilds", {"id": GUILD2, "generate": {"count": 5}})
        c = await self.ready()
        await c.expect(0, "GUILD_CREATE")
        await c.send(8, {"guild_id": GUILD2, "query": "", "limit": 0})
        sizes = []
        for i in range(3):
            ch = (await c.expect(0, "GUILD_MEMBERS_CHUNK"))["d"]
            self.assertEqual((ch["chunk_index"], ch["chunk_count"]), (i, 3))
            sizes.append(len(ch["members"]))
        self.assertEqual(sizes, [2, 2, 1])


class H_HundredThousand(GatewayCase):
    """A fresh mock of its own, so its memory is measured alone."""

    @classmethod
    def setUpClass(cls):
        cls.mock = Mock(TMPDIR, "big")

    @classmethod
    def tearDownClass(cls):
        cls.mock.stop()

    async def test_chunk_100k_members(self):
        n = 100_000
        self.m.ctl("POST", "/_mock/guilds", {"id": GUILD2, "generate": {
            "count": n, "start_id": 400000000000000000, "roles": [ROLE_A]}})
        c = await self.connect()
        await c.identify()
        for _ in range(2):
            await c.expect(0, "GUILD_CREATE")
        rss_before = self.m.rss_kib()
        t0 = time.monotonic()
        await c.send(8, {"guild_id": GUILD2, "query": "", "limit": 0, "nonce": "all"})
        ids, seqs, extra = set(), [], []
        index = 0
        while index < 100:
            ev = await c.recv(timeout=30)
            seqs.append(ev["s"])
            if ev["t"] != "GUILD_MEMBERS_CHUNK":
                extra.append(ev["t"])
                continue
            d = ev["d"]
            self.assertEqual((d["chunk_index"], d["chunk_count"], d["nonce"]), (index, 100, "all"))
            self.assertEqual(len(d["members"]), 1000)
            ids.update(m["user"]["id"] for m in d["members"])
            index += 1
            if index == 10:                     # an event in the middle of the stream
                self.m.ctl("DELETE", "/_mock/members/%s/%s" % (GUILD, USER_B))
        elapsed = time.monotonic() - t0
        hwm = self.m.rss_kib("VmHWM")
        self.assertEqual(len(ids), n)
        self.assertEqual(extra, ["GUILD_MEMBER_REMOVE"])
        self.assertEqual(seqs, list(range(seqs[0], seqs[0] + len(seqs))))
        growth_mib = (hwm - rss_before) / 1024
        sys.stderr.write("\n    100,000 members in 100 chunks: %.2f s, mock RSS %.0f MiB, "
                         "peak growth while chunking %.1f MiB " % (
                             elapsed, rss_before / 1024, growth_mib))
        self.assertLess(elapsed, 20.0)          # about 1 s on an idle machine
        self.assertLess(growth_mib, 64)
        await c.send(1, c.seq)                  # still healthy
        await c.expect(11)


class Z_Lazy(unittest.TestCase):
    """mock_discord.py imports gateway.py only with --gateway-port."""

    def test_gateway_off_and_websockets_missing(self):
        fake = os.path.join(TMPDIR, "nows")
        os.makedirs(os.path.join(fake, "websockets"), exist_ok=True)
        with open(os.path.join(fake, "websockets", "__init__.py"), "w") as fp:
            fp.write("raise ImportError('websockets hidden by the selftest')\n")
        env = dict(os.environ, PYTHONPATH=fake, PYTHONDONTWRITEBYTECODE="1")
        plain = Mock(TMPDIR, "nogw", gateway=False, env=env)
        try:
            self.assertEqual(plain.request("GET", "/_mock/health"), (200, {"ok": True}))
            self.assertEqual(plain.api("GET", "/gateway/bot")[0], 404)
            self.assertEqual(plain.request("GET", "/_mock/gateway")[0], 404)
        finally:
            self.assertEqual(plain.stop(), 0)
        out = subprocess.run([PYTHON, SERVER, "--port", "0", "--port-file",
                              os.path.join(TMPDIR, "x.port"), "--gateway-port", "0"],
                             env=env, capture_output=True, timeout=20)
        self.assertEqual(out.returncode, 1)
        self.assertIn(b"python3-websockets", out.stderr)

    def test_sigterm_with_open_websocket(self):
        mock = Mock(TMPDIR, "term")

        async def hold_and_stop():
            c = await Client.open("ws://127.0.0.1:%d" % mock.gw_port)
            await c.identify()
            t0 = time.monotonic()
            rc = mock.stop()
            code, _ = await c.closed()
            return rc, time.monotonic() - t0, code
        rc, took, code = asyncio.run(hold_and_stop())
        self.assertEqual(rc, 0)
        self.assertLess(took, 5.0)
        self.assertIn(code, (1001, 1006))
        self.assertFalse(os.path.exists(mock.gw_file))
        self.assertFalse(os.path.exists(mock.port_file))


if __name__ == "__main__":
    unittest.main()
