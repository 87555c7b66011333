#!/usr/bin/python3
"""
Self-test of mock_discord.py (python unittest, standard library only).

Starts the mock on an ephemeral loopback port and drives every feature over
real HTTP with http.client and raw sockets. Its last test runs the Gateway's
own selftest, gateway_selftest.py, under /usr/bin/python3 (it needs
python3-websockets, and fails without it). Run:
    /usr/bin/python3 test/mock_discord/selftest.py [-v]
"""

import base64
import http.client
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import unittest
import urllib.parse

HERE = os.path.dirname(os.path.abspath(__file__))
SERVER = os.path.join(HERE, "mock_discord.py")
PYTHON = "/usr/bin/python3" if os.path.exists("/usr/bin/python3") else sys.executable

BOT_TOKEN = "MTE4NzM0MzcxNTIwOTQwODUxMg.GSelft.est-bot-token-4d1c9a"
CLIENT_ID = "1187343715209408512"
CLIENT_SECRET = "selftest-client-secret-8b7f1e"
UA = "DiscordBot (https://example.invalid, 0.1)"

GUILD = "1100000000000000001"
GUILD2 = "1100000000000000002"
ROLE_A = "1200000000000000001"
ROLE_B = "1200000000000000002"
ROLE_PRIV = "1200000000000000099"
USER_A = "300000000000000001"
USER_B = "300000000000000002"
USER_CLOSED = "300000000000000003"
USER_NEW = "300000000000000004"
STRANGER = "399999999999999999"
REDIRECT = "https://portal.example.invalid/discord/callback"

PORT = None
LOG_PATH = None
PROC = None
TMPDIR = None


def wait_for_port_file(path, proc, timeout=10.0):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError("mock exited early with %s" % proc.returncode)
        try:
            with open(path) as fp:
                text = fp.read()
            if text.strip():
                return int(text)
        except FileNotFoundError:
            pass
        time.sleep(0.02)
    raise RuntimeError("mock did not write its port file")


def start_server(tmpdir, name):
    port_file = os.path.join(tmpdir, name + ".port")
    log = os.path.join(tmpdir, name + ".log")
    proc = subprocess.Popen(
        [PYTHON, SERVER, "--host", "127.0.0.1", "--port", "0",
         "--port-file", port_file, "--log", log, "--bot-token", BOT_TOKEN,
         "--client-id", CLIENT_ID, "--client-secret", CLIENT_SECRET],
        stderr=subprocess.DEVNULL)
    return proc, wait_for_port_file(port_file, proc), port_file, log


def setUpModule():
    global PORT, LOG_PATH, PROC, TMPDIR
    TMPDIR = tempfile.mkdtemp(prefix="mock_discord_selftest_")
    PROC, PORT, _, LOG_PATH = start_server(TMPDIR, "main")


def tearDownModule():
    if PROC is not None:
        PROC.send_signal(signal.SIGTERM)
        PROC.wait(timeout=10)
    if TMPDIR is not None:
        shutil.rmtree(TMPDIR, ignore_errors=True)


# --------------------------------------------------------------------------
# Client helpers
# --------------------------------------------------------------------------

class Resp:
    def __init__(self, status, headers, body):
        self.status = status
        self.headers = headers          # http.client.HTTPMessage
        self.body = body

    @property
    def json(self):
        return json.loads(self.body)


class Client:
    """A keep-alive HTTP client on one connection."""

    def __init__(self, timeout=5.0):
        self.timeout = timeout
        self.conn = None

    def request(self, method, path, body=None, headers=None):
        if self.conn is None:
            self.conn = http.client.HTTPConnection("127.0.0.1", PORT,
                                                   timeout=self.timeout)
        try:
            self.conn.request(method, path, body=body, headers=headers or {})
            resp = self.conn.getresponse()
            data = resp.read()
        except Exception:
            self.close()
            raise
        if resp.will_close:
            self.close()
        return Resp(resp.status, resp.headers, data)

    def close(self):
        if self.conn is not None:
            self.conn.close()
            self.conn = None


def bot_headers(token=BOT_TOKEN, extra=None):
    h = {"Authorization": "Bot " + token, "User-Agent": UA}
    h.update(extra or {})
    return h


class MockCase(unittest.TestCase):
    """Base class: a fresh mock state and a keep-alive client per test."""

    def setUp(self):
        self.client = Client()
        self.ctl("POST", "/_mock/reset")

    def tearDown(self):
        self.client.close()

    def ctl(self, method, path, body=None, expect=200):
        data = json.dumps(body).encode() if body is not None else None
        resp = self.client.request(method, path, data,
                                   {"Content-Type": "application/json"})
        self.assertEqual(resp.status, expect, resp.body)
        return resp.json

    def api(self, method, path, body=None, headers=None, auth=True):
        h = bot_headers() if auth else {"User-Agent": UA}
        h.update(headers or {})
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            h.setdefault("Content-Type", "application/json")
        elif method in ("PUT", "POST"):
            data = b""
        return self.client.request(method, "/api/v10" + path, data, h)

    def assertDiscordError(self, resp, status, code, message=None):
        self.assertEqual(resp.status, status, resp.body)
        body = resp.json
        self.assertEqual(body["code"], code, body)
        if message is not None:
            self.assertEqual(body["message"], message)
        return body

    def make_guild(self, gid=GUILD, **extra):
        spec = {"id": gid, "roles": [ROLE_A, ROLE_B],
                "privileged_roles": [ROLE_PRIV],
                "members": [{"id": USER_A, "username": "alice",
                             "global_name": "Alice", "roles": [ROLE_A]},
                            {"id": USER_B, "username": "bob", "roles": []}]}
        spec.update(extra)
        return self.ctl("POST", "/_mock/guilds", spec)

    def records(self, since=0, prefix=None):
        q = {"since": since}
        if prefix:
            q["path_prefix"] = prefix
        return self.ctl("GET", "/_mock/requests?" + urllib.parse.urlencode(q))


def raw_socket(timeout=3.0):
    return socket.create_connection(("127.0.0.1", PORT), timeout=timeout)


def read_response(sock, buf=b""):
    """Read one HTTP response from a raw socket.
    Returns (status, [(name, value)], body, leftover bytes)."""
    while b"\r\n\r\n" not in buf:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("closed before response head")
        buf += chunk
    head, _, buf = buf.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ")[1])
    headers = [tuple(x.strip() for x in line.split(":", 1)) for line in lines[1:]]
    length = 0
    for name, value in headers:
        if name.lower() == "content-length":
            length = int(value)
    while len(buf) < length:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("closed in body")
        buf += chunk
    return status, headers, buf[:length], buf[length:]


def raw_request(method, path, body=b"", headers=None):
    lines = ["%s %s HTTP/1.1" % (method, path), "Host: 127.0.0.1"]
    for k, v in (headers or {}).items():
        lines.append("%s: %s" % (k, v))
    if body or method in ("PUT", "POST"):
        lines.append("Content-Length: %d" % len(body))
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


# --------------------------------------------------------------------------
# HTTP protocol handling
# --------------------------------------------------------------------------

class A_HttpProtocol(MockCase):

    def test_health(self):
        self.assertEqual(self.ctl("GET", "/_mock/health"), {"ok": True})

    def test_keep_alive_reuses_connection(self):
        self.make_guild()
        self.api("GET", "/guilds/%s/members/%s" % (GUILD, USER_A))
        sock = self.client.conn.sock
        for _ in range(20):
            r = self.api("GET", "/guilds/%s/members/%s" % (GUILD, USER_A))
            self.assertEqual(r.status, 200)
        self.assertIs(self.client.conn.sock, sock)

    def test_pipelined_requests_answered_in_order(self):
        self.make_guild()
        h = bot_headers()
        data = (raw_request("GET", "/api/v10/guilds/%s/members/%s" % (GUILD, USER_A), headers=h)
                + raw_request("GET", "/api/v10/guilds/%s/members/%s" % (GUILD, USER_B), headers=h)
                + raw_request("GET", "/_mock/health"))
        with raw_socket() as s:
            s.sendall(data)
            st1, _, b1, rest = read_response(s)
            st2, _, b2, rest = read_response(s, rest)
            st3, _, b3, _ = read_response(s, rest)
        self.assertEqual((st1, st2, st3), (200, 200, 200))
        self.assertEqual(json.loads(b1)["user"]["id"], USER_A)
        self.assertEqual(json.loads(b2)["user"]["id"], USER_B)
        self.assertEqual(json.loads(b3), {"ok": True})

    def test_chunked_request_body(self):
        self.make_guild()
        body = json.dumps({"recipient_id": USER_A}).encode()
        chunks = b"".join(b"%x\r\n%s\r\n" % (len(body[i:i + 7]), body[i:i + 7])
                          for i in range(0, len(body), 7)) + b"0\r\n\r\n"
        head = ("POST /api/v10/users/@me/channels HTTP/1.1\r\nHost: x\r\n"
                "Authorization: Bot %s\r\nUser-Agent: %s\r\n"
                "Content-Type: application/json\r\n"
                "Transfer-Encoding: chunked\r\n\r\n" % (BOT_TOKEN, UA)).encode()
        with raw_socket() as s:
            s.sendall(head + chunks[:10])
            time.sleep(0.05)                # body arrives in two pieces
            s.sendall(chunks[10:])
            status, _, body, _ = read_response(s)
        self.assertEqual(status, 200, body)
        self.assertEqual(json.loads(body)["recipients"][0]["id"], USER_A)

    def test_content_length_body_in_pieces(self):
        self.make_guild()
        body = json.dumps({"recipient_id": USER_B}).encode()
        data = raw_request("POST", "/api/v10/users/@me/channels", body, bot_headers())
        with raw_socket() as s:
            for i in range(0, len(data), 9):
                s.sendall(data[i:i + 9])
            status, _, body, _ = read_response(s)
        self.assertEqual(status, 200)

    def test_connection_close_honoured(self):
        with raw_socket() as s:
            s.sendall(raw_request("GET", "/_mock/health", headers={"Connection": "close"}))
            status, headers, _, rest = read_response(s)
            self.assertEqual(status, 200)
            self.assertIn(("Connection", "close"), headers)
            self.assertEqual(rest + s.recv(100), b"")      # server closed

    def test_http10_closes_by_default(self):
        with raw_socket() as s:
            s.sendall(b"GET /_mock/health HTTP/1.0\r\n\r\n")
            status, _, _, rest = read_response(s)
            self.assertEqual(status, 200)
            self.assertEqual(rest + s.recv(100), b"")

    def test_expect_100_continue(self):
        self.make_guild()
        body = json.dumps({"recipient_id": USER_A}).encode()
        head = ("POST /api/v10/users/@me/channels HTTP/1.1\r\nHost: x\r\n"
                "Authorization: Bot %s\r\nContent-Length: %d\r\n"
                "Expect: 100-continue\r\n\r\n" % (BOT_TOKEN, len(body))).encode()
        with raw_socket() as s:
            s.sendall(head)
            status, _, _, rest = read_response(s)
            self.assertEqual(status, 100)
            s.sendall(body)
            status, _, _, _ = read_response(s, rest)
            self.assertEqual(status, 200)

    def test_malformed_request_gets_400_and_close(self):
        with raw_socket() as s:
            s.sendall(b"NONSENSE\r\n\r\n")
            status, _, _, rest = read_response(s)
            self.assertEqual(status, 400)
            self.assertEqual(rest + s.recv(100), b"")

    def test_require_content_length(self):
        self.make_guild()
        self.ctl("POST", "/_mock/config", {"require_content_length": True})
        path = "/api/v10/guilds/%s/members/%s/roles/%s" % (GUILD, USER_A, ROLE_B)
        head = ("PUT %s HTTP/1.1\r\nHost: x\r\nAuthorization: Bot %s\r\n\r\n"
                % (path, BOT_TOKEN)).encode()
        with raw_socket() as s:
            s.sendall(head)                 # a body-less PUT, no Content-Length
            status, _, _, _ = read_response(s)
            self.assertEqual(status, 411)
            s.sendall(raw_request("PUT", path, headers=bot_headers()))  # Content-Length: 0
            status, _, _, _ = read_response(s)
            self.assertEqual(status, 204)

    def test_unknown_route_and_wrong_method(self):
        r = self.api("GET", "/guilds/%s/bans" % GUILD)
        self.assertEqual((r.status, r.json), (404, {"message": "404: Not Found", "code": 0}))
        r = self.client.request("GET", "/api/v9/users/@me", headers=bot_headers())
        self.assertEqual(r.status, 404)
        r = self.api("DELETE", "/guilds/%s/members" % GUILD)
        self.assertEqual((r.status, r.json),
                         (405, {"message": "405: Method Not Allowed", "code": 0}))


# --------------------------------------------------------------------------
# Bot authentication and the member/role routes
# --------------------------------------------------------------------------

class B_AuthAndRoles(MockCase):

    def role_path(self, user=USER_A, role=ROLE_B, guild=GUILD):
        return "/guilds/%s/members/%s/roles/%s" % (guild, user, role)

    def test_bot_auth_required(self):
        self.make_guild()
        seq = self.records()["last_seq"]
        r = self.api("PUT", self.role_path(), auth=False)
        self.assertEqual((r.status, r.json), (401, {"message": "401: Unauthorized", "code": 0}))
        r = self.api("PUT", self.role_path(), headers={"Authorization": "Bot wrong"})
        self.assertEqual(r.status, 401)
        r = self.api("PUT", self.role_path(), headers={"Authorization": BOT_TOKEN})
        self.assertEqual(r.status, 401)
        recs = self.records(seq)["requests"]
        self.assertEqual([x["auth_ok"] for x in recs], [False, False, False])
        self.assertEqual(recs[1]["headers"]["authorization"], "Bot <redacted:bad>")
        self.assertEqual(recs[2]["headers"]["authorization"], "<redacted>")   # bare token

    def test_user_agent_flag(self):
        self.make_guild()
        seq = self.records()["last_seq"]
        path = "/guilds/%s/members/%s" % (GUILD, USER_A)
        self.api("GET", path)
        self.api("GET", path, headers={"User-Agent": "curl/8.0"})
        self.api("GET", path, headers={"User-Agent": "DiscordBot (no-version)"})
        recs = self.records(seq)["requests"]
        self.assertEqual([x["ua_ok"] for x in recs], [True, False, False])
        self.assertEqual([x["status"] for x in recs], [200, 200, 200])  # not rejected
        self.assertEqual(recs[0]["headers"]["authorization"], "Bot <redacted:ok>")

    def test_add_and_remove_role(self):
        self.make_guild()
        r = self.api("PUT", self.role_path(), headers={"X-Audit-Log-Reason": "sync"})
        self.assertEqual((r.status, r.body), (204, b""))
        self.assertEqual(self.ctl("GET", "/_mock/members/%s/%s" % (GUILD, USER_A)),
                         {"roles": [ROLE_A, ROLE_B]})
        self.assertEqual(self.api("PUT", self.role_path()).status, 204)   # idempotent
        r = self.api("DELETE", self.role_path(role=ROLE_A))
        self.assertEqual(r.status, 204)
        self.assertEqual(self.api("DELETE", self.role_path(role=ROLE_A)).status, 204)
        self.assertEqual(self.ctl("GET", "/_mock/members/%s/%s" % (GUILD, USER_A)),
                         {"roles": [ROLE_B]})
        rec = self.records(prefix="/api/v10/guilds")["requests"][0]
        self.assertEqual(rec["headers"]["x-audit-log-reason"], "sync")
        self.assertEqual(rec["route"], "PUT /guilds/{guild_id}/members/{user_id}/roles/{role_id}")

    def test_role_errors(self):
        self.make_guild()
        self.assertDiscordError(self.api("PUT", self.role_path(guild="1100000000000000999")),
                                404, 10004, "Unknown Guild")
        self.assertDiscordError(self.api("PUT", self.role_path(user=STRANGER)),
                                404, 10007, "Unknown Member")
        self.assertDiscordError(self.api("PUT", self.role_path(role="1200000000000000777")),
                                404, 10011, "Unknown Role")
        self.assertDiscordError(self.api("DELETE", self.role_path(role=ROLE_PRIV)),
                                403, 50013, "Missing Permissions")
        body = self.assertDiscordError(self.api("PUT", self.role_path(user="abc")),
                                       400, 50035, "Invalid Form Body")
        self.assertIn("user_id", body["errors"])
        seq = self.records()["last_seq"]
        self.ctl("DELETE", "/_mock/members/%s/%s" % (GUILD, USER_B))   # member leaves
        self.assertDiscordError(self.api("PUT", self.role_path(user=USER_B)), 404, 10007)
        self.ctl("GET", "/_mock/members/%s/%s" % (GUILD, USER_B), expect=404)
        self.assertEqual(self.records(seq)["requests"][0]["code"], 10007)

    def test_auto_roles(self):
        self.make_guild(auto_roles=True)
        new_role = "1200000000000000555"
        self.assertEqual(self.api("PUT", self.role_path(role=new_role)).status, 204)
        self.assertIn(new_role, self.ctl("GET", "/_mock/guilds/" + GUILD)["roles"])

    def test_get_member(self):
        self.make_guild()
        r = self.api("GET", "/guilds/%s/members/%s" % (GUILD, USER_A))
        self.assertEqual(r.status, 200)
        m = r.json
        self.assertEqual(m["user"], {**m["user"], "id": USER_A, "username": "alice",
                                     "global_name": "Alice", "avatar": None,
                                     "discriminator": "0"})
        self.assertEqual(m["roles"], [ROLE_A])
        for key, value in (("nick", None), ("avatar", None), ("pending", False),
                           ("flags", 0), ("deaf", False), ("mute", False)):
            self.assertEqual(m[key], value, key)
        self.assertRegex(m["joined_at"], r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}\+00:00$")
        self.assertDiscordError(self.api("GET", "/guilds/%s/members/%s" % (GUILD, STRANGER)),
                                404, 10007, "Unknown Member")

    def test_control_members(self):
        self.make_guild()
        self.ctl("POST", "/_mock/members", {"guild_id": GUILD, "id": USER_NEW,
                                            "roles": [ROLE_B], "username": "nina"})
        r = self.api("GET", "/guilds/%s/members/%s" % (GUILD, USER_NEW))
        self.assertEqual((r.json["roles"], r.json["user"]["username"]), ([ROLE_B], "nina"))


# --------------------------------------------------------------------------
# List Guild Members
# --------------------------------------------------------------------------

class C_ListMembers(MockCase):

    def test_pagination_over_250k_members(self):
        start = 200000000000000000
        t0 = time.time()
        out = self.ctl("POST", "/_mock/guilds", {
            "id": GUILD, "roles": [ROLE_A],
            "generate": {"count": 250000, "start_id": start, "roles": [ROLE_A]}})
        self.assertEqual(out["member_count"], 250000)
        after, seen, pages = "0", 0, 0
        last = -1
        while True:
            r = self.api("GET", "/guilds/%s/members?limit=1000&after=%s" % (GUILD, after))
            self.assertEqual(r.status, 200)
            page = r.json
            if not page:
                break
            pages += 1
            ids = [int(m["user"]["id"]) for m in page]
            self.assertEqual(ids, sorted(ids))
            self.assertGreater(ids[0], last)
            last = ids[-1]
            seen += len(ids)
            after = page[-1]["user"]["id"]
        self.assertEqual((seen, pages), (250000, 250))
        self.assertEqual(last, start + 249999)
        self.assertLess(time.time() - t0, 12.0)

    def test_limit_and_after(self):
        self.make_guild()
        r = self.api("GET", "/guilds/%s/members" % GUILD)
        self.assertEqual([m["user"]["id"] for m in r.json], [USER_A])     # default 1
        r = self.api("GET", "/guilds/%s/members?limit=10&after=%s" % (GUILD, USER_A))
        self.assertEqual([m["user"]["id"] for m in r.json], [USER_B])
        for bad in ("0", "1001", "abc"):
            body = self.assertDiscordError(
                self.api("GET", "/guilds/%s/members?limit=%s" % (GUILD, bad)), 400, 50035)
            self.assertIn("limit", body["errors"])


# --------------------------------------------------------------------------
# Add Guild Member (OAuth2 guilds.join)
# --------------------------------------------------------------------------

class D_AddMember(MockCase):

    def test_add_member(self):
        self.make_guild()
        path = "/guilds/%s/members/%s" % (GUILD, USER_NEW)
        self.assertDiscordError(self.api("PUT", path, {}), 400, 50035)
        self.assertDiscordError(self.api("PUT", path, {"access_token": "nope"}),
                                403, 50025, "Invalid OAuth2 access token")
        other = self.ctl("POST", "/_mock/oauth/tokens", {"user_id": USER_B})
        self.assertDiscordError(self.api("PUT", path, {"access_token": other["access_token"]}),
                                403, 50025)
        narrow = self.ctl("POST", "/_mock/oauth/tokens",
                          {"user_id": USER_NEW, "scope": "identify"})
        self.assertDiscordError(self.api("PUT", path, {"access_token": narrow["access_token"]}),
                                403, 50025)
        tok = self.ctl("POST", "/_mock/oauth/tokens", {"user_id": USER_NEW})
        r = self.api("PUT", path, {"access_token": tok["access_token"], "roles": [ROLE_B],
                                   "nick": "Newbie"})
        self.assertEqual(r.status, 201, r.body)
        self.assertEqual((r.json["user"]["id"], r.json["roles"], r.json["nick"]),
                         (USER_NEW, [ROLE_B], "Newbie"))
        r = self.api("PUT", path, {"access_token": tok["access_token"]})
        self.assertEqual((r.status, r.body), (204, b""))
        self.assertEqual(self.ctl("GET", "/_mock/members/%s/%s" % (GUILD, USER_NEW)),
                         {"roles": [ROLE_B]})
        # The access token is redacted in the record.
        rec = self.records(prefix="/api/v10/guilds")["requests"][-1]
        self.assertEqual(rec["body"], {"access_token": "<redacted>"})


# --------------------------------------------------------------------------
# DMs and messages
# --------------------------------------------------------------------------

class E_Messages(MockCase):

    def setUp(self):
        super().setUp()
        self.make_guild()
        self.ctl("POST", "/_mock/users", {"id": USER_CLOSED, "username": "carol",
                                          "dms_closed": True})

    def open_dm(self, user=USER_A):
        r = self.api("POST", "/users/@me/channels", {"recipient_id": user})
        self.assertEqual(r.status, 200, r.body)
        return r.json

    def send(self, channel, body):
        return self.api("POST", "/channels/%s/messages" % channel, body)

    def test_create_dm(self):
        ch = self.open_dm()
        self.assertRegex(ch["id"], r"^\d{17,20}$")
        self.assertEqual((ch["type"], ch["last_message_id"], ch["flags"]), (1, None, 0))
        self.assertEqual(ch["recipients"][0]["id"], USER_A)
        self.assertEqual(self.open_dm()["id"], ch["id"])
        self.assertNotEqual(self.open_dm(USER_B)["id"], ch["id"])
        self.assertDiscordError(self.api("POST", "/users/@me/channels",
                                         {"recipient_id": STRANGER}),
                                400, 50033, "Invalid Recipient(s)")
        self.assertDiscordError(self.api("POST", "/users/@me/channels", {}), 400, 50035)

    def test_create_message(self):
        ch = self.open_dm()["id"]
        r = self.send(ch, {"content": "Welcome aboard!", "nonce": "lhd-1-1",
                           "enforce_nonce": True})
        self.assertEqual(r.status, 200, r.body)
        m = r.json
        self.assertEqual((m["channel_id"], m["content"], m["nonce"], m["type"]),
                         (ch, "Welcome aboard!", "lhd-1-1", 0))
        self.assertEqual(m["author"]["id"], CLIENT_ID)
        self.assertTrue(m["author"]["bot"])
        for key, value in (("tts", False), ("mentions", []), ("attachments", []),
                           ("embeds", []), ("pinned", False)):
            self.assertEqual(m[key], value, key)
        self.assertEqual(self.ctl("GET", "/_mock/messages"),
                         [{"id": m["id"], "channel_id": ch, "recipient_id": USER_A,
                           "content": "Welcome aboard!", "nonce": "lhd-1-1",
                           "timestamp": m["timestamp"]}])
        self.assertEqual(self.records(prefix="/api/v10/channels")["requests"][0]["nonce"],
                         "lhd-1-1")

    def test_message_validation(self):
        ch = self.open_dm()["id"]
        self.assertDiscordError(self.send("1300000000000000999", {"content": "x"}),
                                404, 10003, "Unknown Channel")
        self.assertDiscordError(self.send(ch, {}), 400, 50006, "Cannot send an empty message")
        self.assertDiscordError(self.send(ch, {"content": ""}), 400, 50006)
        body = self.assertDiscordError(self.send(ch, {"content": "x" * 2001}), 400, 50035)
        self.assertEqual(body["errors"]["content"]["_errors"][0]["code"], "BASE_TYPE_MAX_LENGTH")
        self.assertEqual(self.send(ch, {"content": "x" * 2000}).status, 200)
        body = self.assertDiscordError(self.send(ch, {"content": "x", "nonce": "n" * 26}),
                                       400, 50035)
        self.assertIn("nonce", body["errors"])
        self.assertEqual(self.send(ch, {"content": "x", "nonce": "n" * 25}).status, 200)
        self.assertEqual(self.send(ch, {"content": "x", "nonce": 12345}).status, 200)
        closed = self.open_dm(USER_CLOSED)["id"]
        self.assertDiscordError(self.send(closed, {"content": "hi"}),
                                403, 50007, "Cannot send messages to this user")

    def test_enforce_nonce_returns_original(self):
        ch = self.open_dm()["id"]
        body = {"content": "Your roles changed", "nonce": "job-42", "enforce_nonce": True}
        first = self.send(ch, body).json
        second = self.send(ch, body)
        self.assertEqual((second.status, second.json["id"]), (200, first["id"]))
        self.assertEqual(len(self.ctl("GET", "/_mock/messages")), 1)
        # Without enforce_nonce duplicates are created.
        dup = self.send(ch, {"content": "again", "nonce": "job-43"}).json
        dup2 = self.send(ch, {"content": "again", "nonce": "job-43"}).json
        self.assertNotEqual(dup["id"], dup2["id"])
        self.assertEqual(len(self.ctl("GET", "/_mock/messages")), 3)
        # Nonces are the author's, not the channel's: the same nonce in
        # another channel returns the original message too.
        other = self.open_dm(USER_B)["id"]
        self.assertEqual(self.send(other, body).json["id"], first["id"])
        self.assertEqual(len(self.ctl("GET", "/_mock/messages")), 3)

    def test_nonce_window(self):
        self.ctl("POST", "/_mock/config", {"nonce_window": 0.3})
        ch = self.open_dm()["id"]
        body = {"content": "x", "nonce": 777, "enforce_nonce": True}
        first = self.send(ch, body).json["id"]
        self.assertEqual(self.send(ch, body).json["id"], first)
        time.sleep(0.35)
        self.assertNotEqual(self.send(ch, body).json["id"], first)

    def test_lost_response_then_retry_is_deduplicated(self):
        ch = self.open_dm()["id"]
        self.ctl("POST", "/_mock/faults", {"method": "POST", "path": "/messages$",
                                           "drop": True, "process": True})
        body = {"content": "brig notice", "nonce": "job-99", "enforce_nonce": True}
        with self.assertRaises((http.client.HTTPException, ConnectionError)):
            self.send(ch, body)
        r = self.send(ch, body)
        self.assertEqual(r.status, 200)
        msgs = self.ctl("GET", "/_mock/messages")
        self.assertEqual([m["id"] for m in msgs], [r.json["id"]])


# --------------------------------------------------------------------------
# OAuth2
# --------------------------------------------------------------------------

class F_OAuth(MockCase):

    def token(self, form, basic=False, client_id=CLIENT_ID, secret=CLIENT_SECRET):
        headers = {"Content-Type": "application/x-www-form-urlencoded", "User-Agent": UA}
        if basic:
            headers["Authorization"] = "Basic " + base64.b64encode(
                ("%s:%s" % (client_id, secret)).encode()).decode()
        else:
            form = dict(form, client_id=client_id, client_secret=secret)
        return self.client.request("POST", "/api/v10/oauth2/token",
                                   urllib.parse.urlencode(form).encode(), headers)

    def authorize(self, scope="identify guilds.join", client_id=CLIENT_ID, state="st-1"):
        q = urllib.parse.urlencode({"client_id": client_id, "redirect_uri": REDIRECT,
                                    "response_type": "code", "scope": scope,
                                    "state": state})
        return self.client.request("GET", "/oauth2/authorize?" + q)

    def location_query(self, resp):
        self.assertEqual(resp.status, 302, resp.body)
        loc = resp.headers["Location"]
        self.assertTrue(loc.startswith(REDIRECT + "?"), loc)
        return dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(loc).query))

    def test_authorize_and_exchange(self):
        self.ctl("POST", "/_mock/oauth/next_user", {"user_id": USER_NEW})
        q = self.location_query(self.authorize())
        self.assertEqual(q["state"], "st-1")
        code = q["code"]
        # No user configured any more: access denied.
        self.assertEqual(self.location_query(self.authorize()),
                         {"error": "access_denied", "state": "st-1"})
        r = self.token({"grant_type": "authorization_code", "code": code,
                        "redirect_uri": "https://evil.example.invalid/cb"})
        self.assertEqual((r.status, r.json["error"]), (400, "invalid_grant"))
        r = self.token({"grant_type": "authorization_code", "code": code,
                        "redirect_uri": REDIRECT})
        self.assertEqual(r.status, 200, r.body)
        tok = r.json
        self.assertEqual((tok["token_type"], tok["expires_in"], tok["scope"]),
                         ("Bearer", 604800, "identify guilds.join"))
        self.assertTrue(tok["access_token"] and tok["refresh_token"])
        # Codes are single use.
        r = self.token({"grant_type": "authorization_code", "code": code,
                        "redirect_uri": REDIRECT})
        self.assertEqual((r.status, r.json["error"]), (400, "invalid_grant"))
        # The token identifies the user.
        r = self.client.request("GET", "/api/v10/users/@me",
                                headers={"Authorization": "Bearer " + tok["access_token"]})
        self.assertEqual((r.status, r.json["id"]), (200, USER_NEW))
        # Recorded form fields never hold the secrets.
        recs = self.records(prefix="/api/v10/oauth2/token")["requests"]
        for rec in recs:
            self.assertEqual(rec["body"]["client_secret"], "<redacted>")
            self.assertEqual(rec["body"]["code"], "<redacted>")

    def test_authorize_validation(self):
        self.ctl("POST", "/_mock/oauth/next_user", {"user_id": USER_NEW, "sticky": True})
        self.assertEqual(self.authorize(client_id="1").status, 400)
        self.assertEqual(self.location_query(self.authorize(scope="guilds.join"))["error"],
                         "invalid_scope")
        self.assertIn("code", self.location_query(self.authorize()))
        self.assertIn("code", self.location_query(self.authorize()))   # sticky

    def test_client_authentication(self):
        code = self.ctl("POST", "/_mock/oauth/codes", {"user_id": USER_NEW,
                                                       "redirect_uri": REDIRECT})["code"]
        form = {"grant_type": "authorization_code", "code": code, "redirect_uri": REDIRECT}
        r = self.token(form, secret="wrong")
        self.assertEqual((r.status, r.json["error"]), (401, "invalid_client"))
        r = self.token(form, basic=True, secret="wrong")
        self.assertEqual(r.status, 401)
        r = self.token(form, basic=True)
        self.assertEqual(r.status, 200, r.body)
        rec = self.records(prefix="/api/v10/oauth2")["requests"][-1]
        self.assertEqual(rec["headers"]["authorization"], "Basic <redacted>")
        r = self.token({"grant_type": "client_credentials"})
        self.assertEqual((r.status, r.json["error"]), (400, "unsupported_grant_type"))

    def test_refresh(self):
        tok = self.ctl("POST", "/_mock/oauth/tokens", {"user_id": USER_NEW})
        r = self.token({"grant_type": "refresh_token", "refresh_token": tok["refresh_token"]})
        self.assertEqual(r.status, 200, r.body)
        new = r.json
        self.assertNotEqual(new["refresh_token"], tok["refresh_token"])
        r = self.token({"grant_type": "refresh_token", "refresh_token": tok["refresh_token"]})
        self.assertEqual((r.status, r.json["error"]), (400, "invalid_grant"))
        self.assertEqual(self.ctl("POST", "/_mock/oauth/expire", {"all": True}), {"expired": 1})
        r = self.token({"grant_type": "refresh_token", "refresh_token": new["refresh_token"]})
        self.assertEqual(r.status, 400)

    def test_users_me(self):
        tok = self.ctl("POST", "/_mock/oauth/tokens", {"user_id": USER_NEW})
        r = self.client.request("GET", "/api/v10/users/@me", headers={
            "Authorization": "Bearer " + tok["access_token"]})
        self.assertEqual(r.json["id"], USER_NEW)
        r = self.client.request("GET", "/api/v10/users/@me", headers={
            "Authorization": "Bearer not-a-token"})
        self.assertEqual((r.status, r.json), (401, {"message": "401: Unauthorized", "code": 0}))
        expired = self.ctl("POST", "/_mock/oauth/tokens", {"user_id": USER_NEW,
                                                           "expires_in": 0})
        r = self.client.request("GET", "/api/v10/users/@me", headers={
            "Authorization": "Bearer " + expired["access_token"]})
        self.assertEqual(r.status, 401)
        r = self.api("GET", "/users/@me")
        self.assertEqual((r.status, r.json["id"], r.json["bot"]), (200, CLIENT_ID, True))


# --------------------------------------------------------------------------
# Rate limits
# --------------------------------------------------------------------------

class G_RateLimits(MockCase):

    def role(self, method="PUT", guild=GUILD):
        return self.api(method, "/guilds/%s/members/%s/roles/%s" % (guild, USER_A, ROLE_B))

    def test_headers_when_limits_off(self):
        self.make_guild()
        r = self.role()
        self.assertEqual(r.status, 204)
        self.assertGreaterEqual(int(r.headers["X-RateLimit-Limit"]), 1000)
        self.assertRegex(r.headers["X-RateLimit-Reset-After"], r"^\d+\.\d+$")
        self.assertRegex(r.headers["X-RateLimit-Reset"], r"^\d{10}\.\d+$")
        self.assertTrue(r.headers["X-RateLimit-Bucket"])

    def test_route_bucket(self):
        self.make_guild()
        self.make_guild(GUILD2)
        self.ctl("POST", "/_mock/config", {"buckets": {
            "PUT /guilds/{guild_id}/members/{user_id}/roles/{role_id}":
                {"limit": 3, "window": 0.5}}})
        r1, r2, r3 = self.role(), self.role(), self.role("DELETE")   # one shared bucket
        self.assertEqual([r.status for r in (r1, r2, r3)], [204, 204, 204])
        self.assertEqual([r.headers["X-RateLimit-Remaining"] for r in (r1, r2, r3)],
                         ["2", "1", "0"])
        self.assertEqual(r1.headers["X-RateLimit-Bucket"], r3.headers["X-RateLimit-Bucket"])
        reset = float(r1.headers["X-RateLimit-Reset"])
        self.assertAlmostEqual(reset, time.time() + 0.5, delta=0.5)
        r = self.role()
        self.assertEqual(r.status, 429)
        body = r.json
        self.assertEqual((body["message"], body["global"]),
                         ("You are being rate limited.", False))
        self.assertTrue(0 < body["retry_after"] <= 0.5)
        self.assertEqual(r.headers["Retry-After"], "1")
        self.assertEqual(r.headers["X-RateLimit-Scope"], "user")
        self.assertEqual(r.headers["X-RateLimit-Remaining"], "0")
        self.assertIsNone(r.headers["X-RateLimit-Global"])
        # Another major parameter (guild) has its own bucket, same hash.
        other = self.role(guild=GUILD2)
        self.assertEqual(other.status, 204)
        self.assertEqual(other.headers["X-RateLimit-Bucket"], r1.headers["X-RateLimit-Bucket"])
        # Other routes have other buckets.
        g = self.api("GET", "/guilds/%s/members/%s" % (GUILD, USER_A))
        self.assertEqual(g.status, 200)
        self.assertNotEqual(g.headers["X-RateLimit-Bucket"], r1.headers["X-RateLimit-Bucket"])
        time.sleep(float(r.headers["X-RateLimit-Reset-After"]) + 0.02)
        self.assertEqual(self.role().status, 204)
        stats = self.ctl("GET", "/_mock/stats")
        self.assertEqual((stats["rate_limited_bucket"], stats["rate_limited_global"]), (1, 0))
        self.assertEqual(stats["invalid_requests"], 1)

    def test_default_bucket(self):
        self.make_guild()
        self.ctl("POST", "/_mock/config", {"buckets": {"default": {"limit": 1, "window": 5}}})
        self.assertEqual(self.api("GET", "/guilds/%s/members/%s" % (GUILD, USER_A)).status, 200)
        self.assertEqual(self.api("GET", "/guilds/%s/members/%s" % (GUILD, USER_A)).status, 429)
        self.ctl("POST", "/_mock/config", {"buckets": None})
        self.assertEqual(self.api("GET", "/guilds/%s/members/%s" % (GUILD, USER_A)).status, 200)

    def test_global_limit(self):
        self.make_guild()
        self.ctl("POST", "/_mock/config", {"global_limit": 5})
        statuses = []
        for _ in range(8):
            r = self.api("GET", "/guilds/%s/members/%s" % (GUILD, USER_A))
            statuses.append(r.status)
            if r.status == 429:
                limited = r
        self.assertEqual(statuses, [200] * 5 + [429] * 3)
        self.assertEqual(limited.json["global"], True)
        self.assertEqual(limited.headers["X-RateLimit-Global"], "true")
        self.assertEqual(limited.headers["X-RateLimit-Scope"], "global")
        self.assertEqual(limited.headers["Retry-After"], "1")
        self.assertTrue(0 < limited.json["retry_after"] <= 1.0)
        stats = self.ctl("GET", "/_mock/stats")
        self.assertEqual(stats["rate_limited_global"], 3)
        self.assertGreaterEqual(stats["max_per_second"], 8)
        time.sleep(limited.json["retry_after"] + 0.02)
        self.assertEqual(self.api("GET", "/guilds/%s/members/%s" % (GUILD, USER_A)).status, 200)

    def test_header_case(self):
        self.make_guild()
        path = "/api/v10/guilds/%s/members/%s" % (GUILD, USER_A)
        names = {}
        for case in ("lower", "odd"):
            self.ctl("POST", "/_mock/config", {"header_case": case})
            with raw_socket() as s:
                s.sendall(raw_request("GET", path, headers=bot_headers()))
                _, headers, _, _ = read_response(s)
            names[case] = [n for n, _ in headers if n.lower().startswith("x-ratelimit")]
        self.assertIn("x-ratelimit-remaining", names["lower"])
        self.assertTrue(all(n == n.lower() for n in names["lower"]))
        self.assertIn("X-RATELIMIT-BUCKET", names["odd"])
        self.assertIn("x-ratelimit-remaining", names["odd"])

    def test_stats_max_per_second(self):
        self.make_guild()
        for _ in range(12):
            self.api("GET", "/guilds/%s/members/%s" % (GUILD, USER_A))
        self.api("GET", "/guilds/%s/members/%s" % (GUILD, USER_A), auth=False)
        stats = self.ctl("GET", "/_mock/stats")
        self.assertEqual(stats["max_per_second"], 13)
        self.assertEqual(stats["total"], 13)
        self.assertEqual(stats["by_status"], {"200": 12, "401": 1})
        self.assertEqual(stats["invalid_requests"], 1)


# --------------------------------------------------------------------------
# Fault injection
# --------------------------------------------------------------------------

class H_Faults(MockCase):

    def get_member(self, client=None):
        return (client or self).api("GET", "/guilds/%s/members/%s" % (GUILD, USER_A))

    def test_status_rule_with_count(self):
        self.make_guild()
        self.ctl("POST", "/_mock/faults", {"path": "/members/\\d+$", "status": 503, "count": 2})
        self.assertDiscordError(self.get_member(), 503, 0, "503: Service Unavailable")
        self.assertEqual(self.get_member().status, 503)
        self.assertEqual(self.get_member().status, 200)
        self.assertEqual(self.ctl("GET", "/_mock/faults"), {"faults": []})

    def test_method_filter_code_and_clear(self):
        self.make_guild()
        self.ctl("POST", "/_mock/faults", [
            {"method": "PUT", "status": 500, "code": 0, "message": "Internal", "count": -1}])
        self.assertEqual(self.get_member().status, 200)
        role = "/guilds/%s/members/%s/roles/%s" % (GUILD, USER_A, ROLE_B)
        for _ in range(3):
            self.assertDiscordError(self.api("PUT", role), 500, 0, "Internal")
        self.ctl("DELETE", "/_mock/faults")
        self.assertEqual(self.api("PUT", role).status, 204)

    def test_query_filter(self):
        # Fail every page of a member listing but the first.
        self.make_guild()
        self.ctl("POST", "/_mock/faults",
                 {"path": "/members$", "query": "after=[1-9]", "status": 503, "count": -1})
        listing = "/guilds/%s/members" % GUILD
        self.assertEqual(self.api("GET", listing + "?limit=1&after=0").status, 200)
        self.assertEqual(self.api("GET", listing + "?limit=1").status, 200)
        self.assertEqual(self.api("GET", listing + "?limit=1&after=%s" % USER_A).status, 503)

    def test_fault_429(self):
        self.make_guild()
        self.ctl("POST", "/_mock/faults", {"status": 429, "retry_after": 2.5, "global": True})
        r = self.get_member()
        self.assertEqual((r.status, r.json["retry_after"], r.json["global"]), (429, 2.5, True))
        self.assertEqual(r.headers["Retry-After"], "3")

    def test_drop_and_reset(self):
        self.make_guild()
        self.ctl("POST", "/_mock/faults", {"drop": True})
        with self.assertRaises((http.client.HTTPException, ConnectionError)):
            self.get_member()
        self.ctl("POST", "/_mock/faults", {"drop": "reset"})
        with self.assertRaises((http.client.HTTPException, ConnectionError)):
            self.get_member()
        self.assertEqual(self.get_member().status, 200)
        self.assertEqual(self.ctl("GET", "/_mock/stats")["dropped"], 2)

    def test_hang(self):
        self.make_guild()
        self.ctl("POST", "/_mock/faults", {"hang": True})
        self.client.close()                 # reconnect with a short timeout
        self.client.timeout = 0.3
        with self.assertRaises((socket.timeout, TimeoutError)):
            self.get_member()
        self.client.timeout = 5.0
        self.assertEqual(self.get_member().status, 200)
        self.assertEqual(self.ctl("GET", "/_mock/stats")["hung"], 1)

    def test_latency(self):
        self.make_guild()
        self.ctl("POST", "/_mock/faults", {"latency_ms": 250})
        t0 = time.time()
        self.assertEqual(self.get_member().status, 200)      # processed normally
        self.assertGreaterEqual(time.time() - t0, 0.24)
        self.ctl("POST", "/_mock/config", {"latency_ms": 150})
        t0 = time.time()
        self.assertEqual(self.get_member().status, 200)
        self.assertGreaterEqual(time.time() - t0, 0.14)
        t0 = time.time()
        self.ctl("GET", "/_mock/health")                      # control is never slowed
        self.assertLess(time.time() - t0, 0.1)

    def test_down_switch(self):
        self.make_guild()
        self.ctl("POST", "/_mock/config", {"down": True})
        self.assertDiscordError(self.get_member(), 502, 0)
        self.assertEqual(self.api("PUT", "/guilds/%s/members/%s/roles/%s"
                                  % (GUILD, USER_A, ROLE_B)).status, 502)
        self.ctl("POST", "/_mock/config", {"down": False})
        self.assertEqual(self.get_member().status, 200)

    def test_bad_rule_rejected(self):
        self.ctl("POST", "/_mock/faults", {"path": "x"}, expect=400)
        self.ctl("POST", "/_mock/faults", {"status": 503, "count": 0}, expect=400)
        self.ctl("POST", "/_mock/faults", {"status": 503, "bogus": 1}, expect=400)
        self.ctl("POST", "/_mock/faults", {"body_bytes": -1}, expect=400)
        self.ctl("POST", "/_mock/faults", {"body_bytes": "10"}, expect=400)
        self.ctl("POST", "/_mock/faults", {"body_bytes": 10, "body": "x"}, expect=400)
        self.ctl("POST", "/_mock/faults", {"status": 200, "chunked": True}, expect=400)
        self.assertEqual(self.ctl("GET", "/_mock/faults"), {"faults": []})

    def test_fault_429_absurd_retry_after(self):
        # 1e9 seconds, global and per-route, in the body and the headers.
        self.make_guild()
        self.ctl("POST", "/_mock/faults", [
            {"status": 429, "retry_after": 1e9, "global": True},
            {"status": 429, "retry_after": 1e9,
             "headers": {"X-RateLimit-Remaining": "0",
                         "X-RateLimit-Reset-After": "1000000000.000"}}])
        r = self.get_member()
        self.assertEqual((r.status, r.json["retry_after"], r.json["global"]),
                         (429, 1e9, True))
        self.assertEqual(r.headers["Retry-After"], "1000000000")
        self.assertEqual(r.headers["X-RateLimit-Global"], "true")
        self.assertEqual(r.headers["X-RateLimit-Scope"], "global")
        r = self.get_member()
        self.assertEqual((r.status, r.json["retry_after"], r.json["global"]),
                         (429, 1e9, False))
        self.assertEqual(r.headers["Retry-After"], "1000000000")
        self.assertIsNone(r.headers["X-RateLimit-Global"])
        self.assertEqual(r.headers["X-RateLimit-Scope"], "user")
        self.assertEqual(r.headers["X-RateLimit-Reset-After"], "1000000000.000")
        self.assertEqual(self.get_member().status, 200)

    def test_role_put_html_200(self):
        # A 200 with an HTML body where Discord answers 204; the role is not
        # applied unless "process" is set.
        self.make_guild()
        html = "<html><body><h1>Welcome</h1></body></html>"
        self.ctl("POST", "/_mock/faults", {"method": "PUT", "path": "/roles/\\d+$",
                                           "status": 200, "body": html})
        role = "/guilds/%s/members/%s/roles/%s" % (GUILD, USER_A, ROLE_B)
        r = self.api("PUT", role)
        self.assertEqual((r.status, r.body.decode()), (200, html))
        self.assertTrue(r.headers["Content-Type"].startswith("text/html"))
        self.assertEqual(self.ctl("GET", "/_mock/members/%s/%s" % (GUILD, USER_A)),
                         {"roles": [ROLE_A]})
        self.ctl("POST", "/_mock/faults", {"method": "PUT", "path": "/roles/\\d+$",
                                           "status": 200, "body": html, "process": True})
        self.assertEqual(self.api("PUT", role).status, 200)
        self.assertEqual(sorted(self.ctl("GET", "/_mock/members/%s/%s"
                                         % (GUILD, USER_A))["roles"]),
                         sorted([ROLE_A, ROLE_B]))

    def test_reset_is_rst_and_drop_is_fin(self):
        self.make_guild()
        req = raw_request("GET", "/api/v10/guilds/%s/members/%s" % (GUILD, USER_A),
                          headers=bot_headers())
        self.ctl("POST", "/_mock/faults", {"drop": "reset", "count": 2})
        for _ in range(2):
            with raw_socket() as sock:
                sock.sendall(req)
                with self.assertRaises(ConnectionResetError):
                    while sock.recv(65536):
                        pass
        self.ctl("POST", "/_mock/faults", {"drop": True})
        with raw_socket() as sock:
            sock.sendall(req)
            self.assertEqual(sock.recv(65536), b"")          # orderly close
        with raw_socket() as sock:
            sock.sendall(req)
            self.assertEqual(read_response(sock)[0], 200)
        self.assertEqual(self.ctl("GET", "/_mock/stats")["dropped"], 3)

    def test_latency_rule_with_count(self):
        self.make_guild()
        self.ctl("POST", "/_mock/faults", {"latency_ms": 300, "count": 2})
        for slow in (True, True, False):
            t0 = time.time()
            self.assertEqual(self.get_member().status, 200)
            elapsed = time.time() - t0
            if slow:
                self.assertGreaterEqual(elapsed, 0.29)
            else:
                self.assertLess(elapsed, 0.2)

    def test_down_spares_control_and_ends(self):
        self.make_guild()
        self.ctl("POST", "/_mock/config", {"down": True})
        for _ in range(3):
            self.assertDiscordError(self.api("POST", "/users/@me/channels",
                                             {"recipient_id": USER_A}), 502, 0)
        self.assertEqual(self.ctl("GET", "/_mock/health"), {"ok": True})
        self.assertEqual(self.ctl("GET", "/_mock/stats")["by_status"]["502"], 3)
        self.ctl("POST", "/_mock/config", {"down": False})
        self.assertEqual(self.api("POST", "/users/@me/channels",
                                  {"recipient_id": USER_A}).status, 200)


def rss_kib(pid):
    with open("/proc/%d/status" % pid) as fp:
        for line in fp:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


class H2_HugeBodies(MockCase):
    """body_bytes rules: huge bodies streamed, never built in memory."""

    MB100 = 100 * 1024 * 1024

    def member_request(self, extra=None):
        return raw_request("GET", "/api/v10/guilds/%s/members/%s" % (GUILD, USER_A),
                           headers=bot_headers(extra=extra))

    def wait_stats(self, key, value, timeout=10.0):
        deadline = time.time() + timeout
        while True:
            stats = self.ctl("GET", "/_mock/stats")
            if stats[key] >= value or time.time() > deadline:
                return stats
            time.sleep(0.02)

    def read_head(self, sock):
        buf = b""
        while b"\r\n\r\n" not in buf:
            chunk = sock.recv(65536)
            if not chunk:
                raise ConnectionError("closed before response head")
            buf += chunk
        head, _, rest = buf.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        headers = {k.strip().lower(): v.strip()
                   for k, v in (line.split(":", 1) for line in lines[1:])}
        return int(lines[0].split(" ")[1]), headers, rest

    def test_small_body_exact_and_keep_alive(self):
        self.make_guild()
        self.ctl("POST", "/_mock/faults", [{"body_bytes": 3_000_001},
                                           {"body_bytes": 5},
                                           {"body_bytes": 0, "status": 503}])
        r = self.get_member()
        self.assertEqual((r.status, len(r.body)), (200, 3_000_001))
        self.assertEqual(r.headers["Content-Length"], "3000001")
        self.assertEqual(len(r.json["padding"]), 3_000_001 - 14)
        self.assertEqual(self.get_member().body, b"xxxxx")
        r = self.get_member()
        self.assertEqual((r.status, r.body), (503, b""))
        r = self.get_member()                    # same connection, normal again
        self.assertEqual(r.status, 200)
        self.assertEqual(r.json["user"]["id"], USER_A)
        stats = self.ctl("GET", "/_mock/stats")
        self.assertEqual((stats["streams_started"], stats["streams_completed"],
                          stats["streams_abandoned"]), (3, 3, 0))

    get_member = H_Faults.get_member

    def test_chunked_body(self):
        self.make_guild()
        self.ctl("POST", "/_mock/faults", {"body_bytes": 1_000_000, "chunked": True,
                                           "status": 500, "count": 2})
        r = self.get_member()
        self.assertEqual((r.status, len(r.body)), (500, 1_000_000))
        self.assertIsNone(r.headers["Content-Length"])
        self.assertEqual(r.headers["Transfer-Encoding"], "chunked")
        self.assertEqual(len(r.json["padding"]), 1_000_000 - 14)
        # HTTP/1.0 has no chunked encoding: the close ends the body.
        with raw_socket() as sock:
            sock.sendall(self.member_request().replace(b"HTTP/1.1", b"HTTP/1.0", 1))
            status, headers, rest = self.read_head(sock)
            self.assertNotIn("transfer-encoding", headers)
            self.assertNotIn("content-length", headers)
            n = len(rest)
            while True:
                chunk = sock.recv(1 << 20)
                if not chunk:
                    break
                n += len(chunk)
            self.assertEqual((status, n), (500, 1_000_000))
        self.assertEqual(self.get_member().status, 200)

    def test_100mb_abandoned_costs_nothing(self):
        # The client reads 1 MiB and hangs up: the mock stops at once, having
        # handed the socket a small part of the body, and its memory does not
        # grow by anything like the body's size.
        self.make_guild()
        rss_before = rss_kib(PROC.pid)
        for chunked in (False, True):
            self.ctl("POST", "/_mock/faults", {"body_bytes": self.MB100, "chunked": chunked})
            with raw_socket() as sock:
                sock.sendall(self.member_request())
                status, headers, rest = self.read_head(sock)
                self.assertEqual(status, 200)
                if chunked:
                    self.assertEqual(headers.get("transfer-encoding"), "chunked")
                    self.assertNotIn("content-length", headers)
                else:
                    self.assertEqual(headers.get("content-length"), str(self.MB100))
                got = len(rest)
                while got < 1 << 20:
                    got += len(sock.recv(65536))
        stats = self.wait_stats("streams_abandoned", 2)
        self.assertEqual((stats["streams_started"], stats["streams_abandoned"],
                          stats["streams_completed"]), (2, 2, 0))
        # Socket buffers on loopback hold a few MiB; far less than 2 x 100 MB.
        self.assertLess(stats["stream_bytes_sent"], 2 * 32 * 1024 * 1024)
        self.assertLess(rss_kib(PROC.pid) - rss_before, 16 * 1024)
        self.assertEqual(self.get_member().status, 200)

    def test_100mb_read_to_the_end_quickly(self):
        self.make_guild()
        self.ctl("POST", "/_mock/faults", {"body_bytes": self.MB100})
        rss_before = rss_kib(PROC.pid)
        t0 = time.time()
        with raw_socket(timeout=10.0) as sock:
            sock.sendall(self.member_request())
            status, headers, rest = self.read_head(sock)
            got = len(rest)
            buf = bytearray(1 << 20)
            while got < self.MB100:
                n = sock.recv_into(buf)
                if not n:
                    break
                got += n
            self.assertEqual((status, got), (200, self.MB100))
            # The connection stays usable after the body.
            sock.sendall(self.member_request())
            self.assertEqual(read_response(sock)[0], 200)
        self.assertLess(time.time() - t0, 20.0)
        self.assertLess(rss_kib(PROC.pid) - rss_before, 16 * 1024)
        stats = self.ctl("GET", "/_mock/stats")
        self.assertEqual((stats["streams_completed"], stats["stream_bytes_sent"]),
                         (1, self.MB100))


# --------------------------------------------------------------------------
# Recording, control API, logging, lifecycle
# --------------------------------------------------------------------------

class I_RecordingAndControl(MockCase):

    def test_requests_since_and_prefix(self):
        self.make_guild()
        seq = self.records()["last_seq"]
        self.api("GET", "/guilds/%s/members/%s" % (GUILD, USER_A))
        self.api("GET", "/guilds/%s/members?limit=2" % GUILD)
        self.api("POST", "/users/@me/channels", {"recipient_id": USER_A})
        out = self.records(seq)
        self.assertEqual(out["last_seq"], seq + 3)
        self.assertEqual([r["seq"] for r in out["requests"]], [seq + 1, seq + 2, seq + 3])
        rec = out["requests"][1]
        for key in ("seq", "t", "method", "path", "query", "headers", "body", "status",
                    "code", "ua_ok", "auth_ok"):
            self.assertIn(key, rec)
        self.assertEqual(rec["query"], {"limit": "2"})
        self.assertEqual(out["requests"][2]["body"], {"recipient_id": USER_A})
        only = self.records(seq, "/api/v10/users")["requests"]
        self.assertEqual([r["path"] for r in only], ["/api/v10/users/@me/channels"])
        self.assertEqual(self.records(seq + 3)["requests"], [])

    def test_record_off(self):
        self.make_guild()
        self.ctl("POST", "/_mock/config", {"record": False})
        seq = self.records()["last_seq"]
        self.api("GET", "/guilds/%s/members/%s" % (GUILD, USER_A))
        self.assertEqual(self.records(seq)["requests"], [])
        self.assertEqual(self.ctl("GET", "/_mock/stats")["total"], 1)

    def test_reset_keeps_cli_credentials_unless_overridden(self):
        self.ctl("POST", "/_mock/reset", {"bot_token": "other-token"})
        self.assertEqual(self.api("GET", "/users/@me").status, 401)
        self.assertEqual(self.api("GET", "/users/@me", headers={
            "Authorization": "Bot other-token"}).status, 200)
        self.ctl("POST", "/_mock/reset")
        self.assertEqual(self.api("GET", "/users/@me").status, 200)
        cfg = self.ctl("GET", "/_mock/config")
        self.assertEqual((cfg["client_id"], cfg["global_limit"], cfg["buckets"]),
                         (CLIENT_ID, 0, None))
        self.assertNotIn(BOT_TOKEN, json.dumps(cfg))

    def test_config_validation(self):
        self.ctl("POST", "/_mock/config", {"no_such_key": 1}, expect=400)
        self.ctl("POST", "/_mock/config", {"buckets": {"GET /nope": {"limit": 1}}}, expect=400)
        self.ctl("POST", "/_mock/config", {"header_case": "shouting"}, expect=400)
        self.ctl("GET", "/_mock/nothing", expect=404)

    def test_log_never_contains_secrets(self):
        self.make_guild()
        secrets_used = [BOT_TOKEN, CLIENT_SECRET, "wrong-bot-token-123"]
        self.api("GET", "/users/@me")
        self.api("GET", "/users/@me", headers={"Authorization": "Bot wrong-bot-token-123"})
        code = self.ctl("POST", "/_mock/oauth/codes", {"user_id": USER_NEW,
                                                       "redirect_uri": REDIRECT})["code"]
        secrets_used.append(code)
        form = {"grant_type": "authorization_code", "code": code, "redirect_uri": REDIRECT,
                "client_id": CLIENT_ID, "client_secret": CLIENT_SECRET}
        tok = self.client.request("POST", "/api/v10/oauth2/token",
                                  urllib.parse.urlencode(form).encode(),
                                  {"Content-Type": "application/x-www-form-urlencoded"}).json
        secrets_used += [tok["access_token"], tok["refresh_token"]]
        self.client.request("GET", "/api/v10/users/@me",
                            headers={"Authorization": "Bearer " + tok["access_token"]})
        self.api("PUT", "/guilds/%s/members/%s" % (GUILD, USER_NEW),
                 {"access_token": tok["access_token"]})
        basic = base64.b64encode(("%s:%s" % (CLIENT_ID, CLIENT_SECRET)).encode()).decode()
        secrets_used.append(basic)
        self.client.request("POST", "/api/v10/oauth2/token",
                            urllib.parse.urlencode({"grant_type": "refresh_token",
                                                    "refresh_token": tok["refresh_token"]}).encode(),
                            {"Content-Type": "application/x-www-form-urlencoded",
                             "Authorization": "Basic " + basic})
        with open(LOG_PATH) as fp:
            log = fp.read()
        self.assertIn("/api/v10/oauth2/token", log)
        for secret in secrets_used:
            self.assertFalse(secret in log, "secret %r leaked into the log" % secret[:6])
        for line in log.splitlines():
            json.loads(line)
        recs = json.dumps(self.records()["requests"])
        for secret in secrets_used:
            self.assertFalse(secret in recs, "secret %r leaked into a record" % secret[:6])


class J_Lifecycle(unittest.TestCase):

    def test_refuses_non_loopback_host(self):
        out = subprocess.run([PYTHON, SERVER, "--host", "0.0.0.0", "--port", "0",
                              "--port-file", os.path.join(TMPDIR, "never.port")],
                             capture_output=True, timeout=10)
        self.assertEqual(out.returncode, 2)
        self.assertIn(b"loopback", out.stderr)

    def test_max_per_second_fold_is_exact(self):
        sys.dont_write_bytecode = True      # leave no __pycache__ behind
        sys.path.insert(0, HERE)
        import mock_discord
        app = mock_discord.MockDiscord("t", CLIENT_ID, "s")
        base = 1_700_000_000.0
        times = [base + i * 0.01 for i in range(300)]           # 100/s
        times += [base + 3 + i * 0.001 for i in range(500)]     # burst: 500 in 0.5 s
        times += [base + 4 + i * 0.01 for i in range(300)]
        for t in times[:700]:
            app.arrivals.append(t)
        app.fold_arrivals()
        for t in times[700:]:
            app.arrivals.append(t)
        self.assertEqual(app.max_per_second(), app.window_max(times))
        self.assertEqual(app.max_per_second(), 500 + 50)

    def test_port_file_and_sigterm(self):
        proc, port, port_file, _ = start_server(TMPDIR, "lifecycle")
        try:
            with open(port_file) as fp:
                self.assertRegex(fp.read(), r"^\d+\n$")
            self.assertEqual([f for f in os.listdir(TMPDIR) if f.endswith(".tmp")], [])
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            conn.request("GET", "/_mock/health")
            self.assertEqual(conn.getresponse().read(), b'{"ok":true}')
            # An open keep-alive connection must not stop the shutdown.
            proc.send_signal(signal.SIGTERM)
            self.assertEqual(proc.wait(timeout=5), 0)
            conn.close()
            self.assertFalse(os.path.exists(port_file))
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


class K_Gateway(unittest.TestCase):
    """The Gateway (gateway.py) has a selftest of its own, run here last."""

    def test_gateway_selftest(self):
        out = subprocess.run([PYTHON, os.path.join(HERE, "gateway_selftest.py")],
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                             timeout=300)
        text = out.stdout.decode(errors="replace")
        if out.returncode != 0:
            self.fail("gateway_selftest.py exited %d:\n%s" % (out.returncode, text[-8000:]))
        summary = re.findall(r"100,000 members[^\n]*?chunking [\d.]+ MiB|Ran \d+ tests in [\d.]+s",
                             text)
        sys.stderr.write("\n    gateway_selftest: %s " % "; ".join(summary))


if __name__ == "__main__":
    unittest.main()
