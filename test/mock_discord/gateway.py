"""
gateway.py - the mock Discord server's Gateway: a WebSocket endpoint that
speaks Discord's Gateway protocol v10 with encoding=json, sharing the guild
and member state of mock_discord.py (which imports this module only when it
is started with --gateway-port, so the REST mock runs without websockets).

Owns: the WebSocket servers, sessions, sequence numbers, resume buffers,
member chunking, the Gateway's limits and fault injection, its counters, and
the /_mock/gateway/... control routes (mock_discord.py hands them over).
The WebSocket framing is Debian's python3-websockets (10.x on Debian 12,
15.x on Debian 13; both APIs are handled: handler(ws), the request path from
ws.request.path or ws.path).

Two listeners on the mock's host: the Gateway URL that GET /gateway/bot
returns (--gateway-port) and a second, ephemeral one given as READY's
resume_gateway_url, so a test can tell which URL a client reconnected to
(stats connections[].url is "gateway" or "resume"). Both require
?v=10&encoding=json (else close 4012 / 4002; compress is not supported).

Protocol (client view):
  connect -> HELLO {heartbeat_interval} (after hello_delay_ms)
  op 1 HEARTBEAT {d: seq|null}  -> op 11 HEARTBEAT_ACK (allowed before
       IDENTIFY); no heartbeat for heartbeat_interval x
       heartbeat_timeout_factor -> close 4009
  op 2 IDENTIFY {token, properties{os,browser,device}, intents, shard?,
       large_threshold?} -> READY {v, user, guilds[{id, unavailable}],
       session_id, resume_gateway_url, shard?, application{id, flags}},
       then one GUILD_CREATE per guild (member_count, large; members only
       when member_count <= large_threshold).
       Bad token 4004; bad shard 4010; unknown intent bits 4013;
       a privileged intent not in privileged_intents 4014; intents lacking
       required_intents (default GUILDS|GUILD_MEMBERS, a mock strictness)
       4013; session_start_limit.remaining 0, or more than max_concurrency
       IDENTIFYs in identify_window seconds -> op 9 INVALID_SESSION false
       (the connection stays open; the refusal is counted).
  op 6 RESUME {token, session_id, seq} -> every buffered dispatch with
       s > seq, in order, then RESUMED. Unknown, invalidated or expired
       (resume_timeout) session, events lost past the resume buffer, or a
       refuse_resume fault -> op 9 false. seq beyond the session's -> 4007.
  op 8 REQUEST_GUILD_MEMBERS {guild_id, query+limit | user_ids, presences,
       nonce} -> GUILD_MEMBERS_CHUNK x chunk_count (chunk_size members each,
       chunk_index, chunk_count, nonce if valid (<= 32 bytes), not_found in
       the first chunk); built one chunk at a time while the socket takes
       them. The whole list (query "" limit 0) needs GUILD_MEMBERS (4013).
  op 3, 4, 31 accepted and ignored once identified.
  Before IDENTIFY/RESUME any op but 1, 2, 6 -> 4003; a second IDENTIFY or
  RESUME -> 4005; unknown op 4001; not JSON / not an object / binary /
  over 4096 bytes -> 4002; more than command_limit.count payloads in
  command_limit.window seconds (default 120 per 60) -> 4008.
  After a close with 4004, 4007, 4009-4014 (sent or by a fault), a client
  close with 1000/1001, op 9 false or a refused RESUME, the session is gone;
  after any other close or a dropped connection it can be resumed (for
  resume_timeout s; a RESUME of a session whose connection still looks open
  takes it over and drops the old connection, a zombie).
  Not emulated: compress/zlib-stream and etf, 4011 sharding required, the
  RATE_LIMITED event for op 8, presences, voice; POST /_mock/users (a
  profile change) sends no GUILD_MEMBER_UPDATE.

Dispatches (every identified session whose intents and shard match):
  GUILD_MEMBER_ADD (member + guild_id), GUILD_MEMBER_UPDATE (guild_id, roles,
  user, nick, avatar, banner, joined_at, premium_since, deaf, mute, pending,
  flags, communication_disabled_until), GUILD_MEMBER_REMOVE {guild_id,
  user} (intent GUILD_MEMBERS), when the control API or the bot's REST calls
  add, change or remove a member (no event when nothing changed);
  GUILD_CREATE when POST /_mock/guilds creates a guild (a replaced one is
  GUILD_DELETE {id, unavailable: true} then GUILD_CREATE), GUILD_DELETE {id}
  for every guild on POST /_mock/reset (intent GUILDS).
  Each session numbers its dispatches s = 1, 2, ... and keeps the newest
  resume_buffer of them (at most resume_buffer_bytes) for RESUME, also while
  disconnected. A drop during a member chunk sequence stops the sequence.

Control API (JSON; under /_mock/gateway; 404 without --gateway-port):
  GET  /_mock/gateway           {url, resume_url, config}
  GET  /_mock/gateway/config    the config below
  POST /_mock/gateway/config    any of:
       heartbeat_interval (ms, 41250), heartbeat_timeout_factor (1.5; 0 =
       never time out), hello_delay_ms (0), ack_heartbeats (true),
       resume_timeout (s, 120), resume_buffer (1000 events),
       resume_buffer_bytes (8388608), chunk_size (1000),
       command_limit {count 120, window 60}, identify_window (s, 5; 0 = off),
       privileged_intents (bits the "developer portal" allows; 33026 =
       GUILD_MEMBERS|GUILD_PRESENCES|MESSAGE_CONTENT; 0 refuses them all),
       required_intents (3), max_payload (4096),
       session_start_limit {total 1000, remaining 1000, reset_after (ms,
       86400000), max_concurrency 1} (partial objects merge; remaining goes
       back to total reset_after ms after it was set)
  POST /_mock/gateway/faults    one object or a list; each
       {"action": A, "session_id"?: S, "connection_id"?: N} (default: every
       open connection) -> {"affected": [connection ids]}; A is
         "drop"             abort the TCP connection, no close frame
         "close"            close frame {"code" (4000), "reason"?,
                            "resumable"? (default per code, see above)}
         "reconnect"        send op 7 RECONNECT (the connection stays open)
         "invalid_session"  send op 9 {"resumable": false} (false also
                            forgets the session; the connection stays open)
         "heartbeat"        send op 1 (ask for a heartbeat now)
         "stop_acks" | "resume_acks"  stop/restart ACKing heartbeats
         "mute" | "unmute"  send nothing at all (dispatches still go to the
                            resume buffer): a zombie connection
         "refuse_resume"    {"count" (1)}: the next RESUMEs get op 9 false
  POST /_mock/gateway/dispatch  {"t", "d", "session_id"?} a raw dispatch
  GET  /_mock/gateway/stats     counters (DELETE zeroes them):
       connections_total, connections_open, connections [{id, url,
       session_id, opened_at, heartbeats, last_heartbeat_at, acks, muted}],
       connection_times, identifies, identify_times, identifies_refused
       {rate_limited, start_limit}, resumes, resume_times, resumes_refused,
       resume_refusals [{t, reason}], replayed, heartbeats, heartbeat_acks,
       heartbeat_timeouts, commands {"<op>": n}, rate_limited, dispatches
       {"<event>": n}, chunk_requests, chunks_sent, close_codes {"<code>":
       n}, closes [{t, connection_id, session_id, code, reason, by}],
       last_close_code, last_close, sessions [{session_id, seq, connected,
       intents, shard, buffered, first_buffered_seq, created_at}],
       session_start_limit. Times are Unix seconds (lists keep the last
       1000); "by" is server (close frame from the mock), client (close
       frame from the client), drop (the mock dropped it: code 1006) or
       lost (gone without a close frame: 1006).
  POST /_mock/reset also resets this config, the counters and the faults,
  and forgets the disconnected sessions (connected ones get GUILD_DELETEs).
"""

import asyncio
import collections
import hmac
import json
import logging
import math
import secrets
import time
import traceback
import urllib.parse

import websockets

OP_DISPATCH, OP_HEARTBEAT, OP_IDENTIFY, OP_RESUME = 0, 1, 2, 6
OP_RECONNECT, OP_REQUEST_MEMBERS, OP_INVALID_SESSION = 7, 8, 9
OP_HELLO, OP_HEARTBEAT_ACK = 10, 11
OPS_IGNORED = (3, 4, 31)            # presence, voice state, soundboard

GUILDS, GUILD_MEMBERS = 1 << 0, 1 << 1
GUILD_PRESENCES, MESSAGE_CONTENT = 1 << 8, 1 << 15
PRIVILEGED = GUILD_MEMBERS | GUILD_PRESENCES | MESSAGE_CONTENT
KNOWN_INTENTS = (1 << 26) - 1
# Application flags for the privileged intents enabled in the portal.
APP_FLAGS = ((GUILD_PRESENCES, 1 << 12), (GUILD_MEMBERS, 1 << 14),
             (MESSAGE_CONTENT, 1 << 18))

CLOSE_REASONS = {
    4000: "Unknown error.", 4001: "Unknown opcode.", 4002: "Decode error.",
    4003: "Not authenticated.", 4004: "Authentication failed.",
    4005: "Already authenticated.", 4007: "Invalid seq.",
    4008: "Rate limited.", 4009: "Session timed out.",
    4010: "Invalid shard.", 4011: "Sharding required.",
    4012: "Invalid API version.", 4013: "Invalid intent(s).",
    4014: "Disallowed intent(s).",
}
# Closes after which Discord wants a new session rather than a RESUME.
NOT_RESUMABLE = frozenset({4004, 4007, 4009, 4010, 4011, 4012, 4013, 4014})

DEFAULTS = {
    "heartbeat_interval": 41250, "heartbeat_timeout_factor": 1.5,
    "hello_delay_ms": 0, "ack_heartbeats": True, "resume_timeout": 120.0,
    "resume_buffer": 1000, "resume_buffer_bytes": 8 * 1024 * 1024,
    "chunk_size": 1000, "command_limit": {"count": 120, "window": 60.0},
    "identify_window": 5.0, "privileged_intents": PRIVILEGED,
    "required_intents": GUILDS | GUILD_MEMBERS, "max_payload": 4096,
    "session_start_limit": {"total": 1000, "remaining": 1000,
                            "reset_after": 86400000, "max_concurrency": 1},
}
KEEP = 1000                         # entries kept in each stats list
DISCONNECTED_SESSIONS_MAX = 64

logging.getLogger("websockets").setLevel(logging.CRITICAL)


def dumps(obj):
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False)


def is_int(v):
    return isinstance(v, int) and not isinstance(v, bool)


def is_snowflake(v):
    return isinstance(v, str) and v.isascii() and v.isdigit() and len(v) <= 20


def request_path(ws):
    """The request target: ws.request.path (websockets >= 13) or ws.path."""
    req = getattr(ws, "request", None)
    path = getattr(req, "path", None) if req is not None else None
    return path if path is not None else getattr(ws, "path", "/")


def fresh_stats():
    lst = lambda: collections.deque(maxlen=KEEP)    # noqa: E731
    return {
        "connections_total": 0, "connection_times": lst(),
        "identifies": 0, "identify_times": lst(),
        "identifies_refused": {"rate_limited": 0, "start_limit": 0},
        "resumes": 0, "resume_times": lst(), "resumes_refused": 0,
        "resume_refusals": lst(), "replayed": 0,
        "heartbeats": 0, "heartbeat_acks": 0, "heartbeat_timeouts": 0,
        "commands": {}, "rate_limited": 0, "dispatches": {},
        "chunk_requests": 0, "chunks_sent": 0, "close_codes": {},
        "closes": lst(), "last_close_code": None, "last_close": None,
    }


class Session:
    """An identified session: its sequence, resume buffer and connection."""

    def __init__(self, gw, intents, shard, large_threshold):
        self.gw = gw
        self.id = secrets.token_hex(16)
        self.intents = intents
        self.shard = shard
        self.large_threshold = large_threshold
        self.seq = 0
        self.buffer = collections.deque()       # (seq, text)
        self.buffer_bytes = 0
        self.conn = None
        self.disconnected_at = None
        self.created_at = time.time()

    def owns(self, guild_id):
        shard_id, count = self.shard
        return (int(guild_id) >> 22) % count == shard_id

    def wants(self, guild_id, intent):
        return bool(self.intents & intent) and self.owns(guild_id)

    def expired(self, now):
        return self.conn is None and self.disconnected_at is not None and \
            now - self.disconnected_at > self.gw.cfg["resume_timeout"]

    def dispatch(self, t, d):
        """Number the event, keep it for RESUME, queue it when connected."""
        self.seq += 1
        text = dumps({"op": OP_DISPATCH, "t": t, "s": self.seq, "d": d})
        cfg = self.gw.cfg
        self.buffer.append((self.seq, text))
        self.buffer_bytes += len(text)
        while len(self.buffer) > 1 and (
                len(self.buffer) > cfg["resume_buffer"]
                or self.buffer_bytes > cfg["resume_buffer_bytes"]):
            self.buffer_bytes -= len(self.buffer.popleft()[1])
        counts = self.gw.stats["dispatches"]
        counts[t] = counts.get(t, 0) + 1
        if self.conn is not None:
            self.conn.queue.put_nowait(text)

    def to_json(self):
        return {"session_id": self.id, "seq": self.seq,
                "connected": self.conn is not None, "intents": self.intents,
                "shard": list(self.shard), "buffered": len(self.buffer),
                "first_buffered_seq": self.buffer[0][0] if self.buffer else None,
                "created_at": self.created_at}


class Conn:
    """One WebSocket connection: reader, writer queue, heartbeat watchdog."""

    def __init__(self, gw, ws, url_kind, cid):
        self.gw = gw
        self.ws = ws
        self.url_kind = url_kind
        self.id = cid
        self.queue = asyncio.Queue()
        self.session = None
        self.open = True
        self.closed_by = None
        self.acks = True
        self.muted = False
        self.interval = gw.cfg["heartbeat_interval"]
        self.last_beat = time.monotonic()
        self.last_beat_at = None
        self.heartbeats = 0
        self.cmd_times = collections.deque()
        self.opened_at = time.time()
        self.tasks = set()

    def spawn(self, coro):
        task = asyncio.ensure_future(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        return task

    def send_op(self, op, d=None):
        self.queue.put_nowait(dumps({"op": op, "d": d, "s": None, "t": None}))

    def to_json(self):
        return {"id": self.id, "url": self.url_kind,
                "session_id": self.session.id if self.session else None,
                "opened_at": self.opened_at, "heartbeats": self.heartbeats,
                "last_heartbeat_at": self.last_beat_at, "acks": self.acks,
                "muted": self.muted}

    # ---- lifecycle ------------------------------------------------------

    async def run(self):
        query = urllib.parse.parse_qs(urllib.parse.urlsplit(request_path(self.ws)).query)
        if query.get("v") != ["10"]:
            return await self.close(4012, "Use ?v=10.")
        if query.get("encoding", ["json"]) != ["json"] or "compress" in query:
            return await self.close(4002, "The mock speaks encoding=json only, "
                                    "without compress.")
        delay = self.gw.cfg["hello_delay_ms"] / 1000.0
        if delay > 0:
            await asyncio.sleep(delay)
        self.interval = self.gw.cfg["heartbeat_interval"]
        self.last_beat = time.monotonic()
        self.spawn(self.writer())
        self.spawn(self.watchdog())
        self.send_op(OP_HELLO, {"heartbeat_interval": self.interval})
        try:
            async for message in self.ws:
                verdict = self.on_message(message)
                if verdict is not None:
                    await self.close(*verdict)
                    break
        except websockets.ConnectionClosed:
            pass

    async def writer(self):
        while True:
            text = await self.queue.get()
            if self.muted:
                continue
            try:
                await self.ws.send(text)
            except websockets.ConnectionClosed:
                return

    async def watchdog(self):
        while self.open and self.closed_by is None:
            factor = self.gw.cfg["heartbeat_timeout_factor"]
            left = 1.0
            if factor:
                left = self.last_beat + self.interval / 1000.0 * factor - time.monotonic()
                if left <= 0:
                    self.gw.stats["heartbeat_timeouts"] += 1
                    await self.close(4009, "Session timed out: no heartbeat.")
                    return
            await asyncio.sleep(min(max(left, 0.005), 1.0))

    async def close(self, code, reason=None, resumable=None):
        if self.closed_by is not None:
            return
        reason = reason or CLOSE_REASONS.get(code, "")
        self.closed_by = "server"
        self.gw.record_close(self, code, reason, "server")
        if resumable is None:
            resumable = code not in NOT_RESUMABLE
        if not resumable and self.session is not None:
            self.gw.drop_session(self.session)
        try:
            await asyncio.wait_for(self.ws.close(code, reason), 3.0)
        except Exception:       # the peer is gone or slow: cut it off
            self.cut()

    def cut(self):
        transport = getattr(self.ws, "transport", None)
        if transport is not None:
            transport.abort()

    def drop(self):
        """Abort the TCP connection without a close frame."""
        if self.closed_by is None:
            self.closed_by = "drop"
            self.gw.record_close(self, 1006, "dropped by the mock", "drop")
        self.cut()

    def finish(self):
        self.open = False
        for task in list(self.tasks):
            task.cancel()
        if self.closed_by is None:
            code = getattr(self.ws, "close_code", None) or 1006
            rcvd = code != 1006
            self.closed_by = "client" if rcvd else "lost"
            self.gw.record_close(self, code, getattr(self.ws, "close_reason", "")
                                 or "", self.closed_by)
            if code in (1000, 1001) and self.session is not None:
                self.gw.drop_session(self.session)
        session = self.session
        if session is not None and session.conn is self:
            session.conn = None
            session.disconnected_at = time.monotonic()

    # ---- commands -------------------------------------------------------

    def on_message(self, message):
        """Handle one client payload; returns None or (close code, reason)."""
        gw, cfg = self.gw, self.gw.cfg
        if not isinstance(message, str):
            return 4002, "Binary frames are not accepted with encoding=json."
        if len(message.encode()) > cfg["max_payload"]:
            return 4002, "Payload over %d bytes." % cfg["max_payload"]
        now = time.monotonic()
        limit, times = cfg["command_limit"], self.cmd_times
        while times and times[0] <= now - limit["window"]:
            times.popleft()
        if len(times) >= limit["count"]:
            gw.stats["rate_limited"] += 1
            return 4008, None
        times.append(now)
        try:
            payload = json.loads(message)
        except ValueError:
            return 4002, "Payload is not JSON."
        if not isinstance(payload, dict) or not is_int(payload.get("op")):
            return 4002, "Payload needs an integer op."
        op, d = payload["op"], payload.get("d")
        commands = gw.stats["commands"]
        commands[str(op)] = commands.get(str(op), 0) + 1
        if op == OP_HEARTBEAT:
            return self.on_heartbeat(d)
        if op == OP_IDENTIFY:
            return self.on_identify(d)
        if op == OP_RESUME:
            return self.on_resume(d)
        if op == OP_REQUEST_MEMBERS or op in OPS_IGNORED:
            if self.session is None:
                return 4003, None
            return self.on_request_members(d) if op == OP_REQUEST_MEMBERS else None
        return 4001, "Unknown opcode %d." % op

    def on_heartbeat(self, d):
        if d is not None and not is_int(d):
            return 4002, "Heartbeat d must be the last sequence number or null."
        stats = self.gw.stats
        self.last_beat = time.monotonic()
        self.last_beat_at = time.time()
        self.heartbeats += 1
        stats["heartbeats"] += 1
        if self.acks and self.gw.cfg["ack_heartbeats"]:
            self.send_op(OP_HEARTBEAT_ACK)
            stats["heartbeat_acks"] += 1
        return None

    def on_identify(self, d):
        gw, cfg = self.gw, self.gw.cfg
        if self.session is not None:
            return 4005, None
        if not isinstance(d, dict) or not isinstance(d.get("token"), str) \
                or not isinstance(d.get("properties"), dict) \
                or not is_int(d.get("intents")):
            return 4002, "IDENTIFY needs token, properties and intents."
        if not all(isinstance(d["properties"].get(k), str)
                   for k in ("os", "browser", "device")):
            return 4002, "IDENTIFY properties need os, browser and device."
        if not hmac.compare_digest(d["token"].encode(), gw.app.bot_token.encode()):
            return 4004, None
        shard = d.get("shard", [0, 1])
        if not (isinstance(shard, list) and len(shard) == 2 and all(map(is_int, shard))
                and shard[1] >= 1 and 0 <= shard[0] < shard[1]):
            return 4010, None
        threshold = d.get("large_threshold", 50)
        if not is_int(threshold) or not 50 <= threshold <= 250:
            return 4002, "large_threshold must be 50..250."
        intents = d["intents"]
        if intents < 0 or intents & ~KNOWN_INTENTS:
            return 4013, None
        if intents & PRIVILEGED & ~cfg["privileged_intents"]:
            return 4014, None
        if intents & cfg["required_intents"] != cfg["required_intents"]:
            return 4013, "The mock requires intents %d." % cfg["required_intents"]
        refusal = gw.take_identify()
        if refusal is not None:
            gw.stats["identifies_refused"][refusal] += 1
            self.send_op(OP_INVALID_SESSION, False)
            return None
        session = Session(gw, intents, tuple(shard), threshold)
        gw.add_session(session)
        session.conn, self.session = self, session
        app = gw.app
        user = dict(app.bot_user().to_json(), verified=True, mfa_enabled=False)
        flags = sum(flag for intent, flag in APP_FLAGS
                    if cfg["privileged_intents"] & intent)
        owned = [g for g in app.guilds.values() if session.owns(g.id)]
        ready = {"v": 10, "user": user,
                 "guilds": [{"id": g.id, "unavailable": True} for g in owned],
                 "session_id": session.id, "resume_gateway_url": gw.resume_url,
                 "application": {"id": app.client_id, "flags": flags}}
        if "shard" in d:
            ready["shard"] = list(shard)
        session.dispatch("READY", ready)
        if intents & GUILDS:
            for guild in owned:
                session.dispatch("GUILD_CREATE", gw.guild_payload(guild, session))
        return None

    def on_resume(self, d):
        gw = self.gw
        if self.session is not None:
            return 4005, None
        if not isinstance(d, dict) or not isinstance(d.get("token"), str) \
                or not isinstance(d.get("session_id"), str) or not is_int(d.get("seq")):
            return 4002, "RESUME needs token, session_id and seq."
        if not hmac.compare_digest(d["token"].encode(), gw.app.bot_token.encode()):
            return 4004, None
        session = gw.sessions.get(d["session_id"])
        seq = d["seq"]
        reason = None
        if gw.refuse_resumes > 0:
            gw.refuse_resumes -= 1
            reason = "refused by a refuse_resume fault"
        elif session is None:
            reason = "unknown or invalidated session"
        elif session.expired(time.monotonic()):
            reason = "session expired (resume_timeout)"
        elif seq > session.seq:
            gw.drop_session(session)
            return 4007, "seq %d is past the session's %d." % (seq, session.seq)
        elif seq < session.seq and (not session.buffer or session.buffer[0][0] > seq + 1):
            reason = "events after seq %d are no longer buffered" % seq
        if reason is not None:
            gw.stats["resumes_refused"] += 1
            gw.stats["resume_refusals"].append({"t": time.time(), "reason": reason})
            if session is not None:
                gw.drop_session(session)
            self.send_op(OP_INVALID_SESSION, False)
            return None
        old = session.conn
        if old is not None and old is not self:
            old.drop()              # a zombie the client gave up on
            old.session = None
        session.conn, self.session = self, session
        session.disconnected_at = None
        replay = [text for s, text in session.buffer if s > seq]
        for text in replay:
            self.queue.put_nowait(text)
        gw.stats["resumes"] += 1
        gw.stats["resume_times"].append(time.time())
        gw.stats["replayed"] += len(replay)
        session.dispatch("RESUMED", {})
        return None

    def on_request_members(self, d):
        if not isinstance(d, dict) or not is_snowflake(d.get("guild_id")):
            return 4002, "REQUEST_GUILD_MEMBERS needs a guild_id."
        query, user_ids, limit = d.get("query"), d.get("user_ids"), d.get("limit")
        if user_ids is not None:
            if is_snowflake(user_ids):
                user_ids = [user_ids]
            if not isinstance(user_ids, list) or len(user_ids) > 100 \
                    or not all(map(is_snowflake, user_ids)):
                return 4002, "user_ids must be up to 100 snowflakes."
        elif not isinstance(query, str) or not is_int(limit) or limit < 0:
            return 4002, "REQUEST_GUILD_MEMBERS needs query and limit, or user_ids."
        elif query == "" and limit == 0 and not self.session.intents & GUILD_MEMBERS:
            return 4013, "Listing every member needs the GUILD_MEMBERS intent."
        nonce = d.get("nonce")
        if not isinstance(nonce, str) or len(nonce.encode()) > 32:
            nonce = None            # Discord ignores an invalid nonce
        self.gw.stats["chunk_requests"] += 1
        self.spawn(self.send_chunks(self.session, d["guild_id"], query, limit,
                                    user_ids, nonce, bool(d.get("presences"))))
        return None

    async def send_chunks(self, session, gid, query, limit, user_ids, nonce, presences):
        app = self.gw.app
        guild = app.guilds.get(gid)
        not_found = []
        if guild is None:
            ids = []
        elif user_ids is not None:
            ids = [int(u) for u in user_ids if int(u) in guild.members]
            not_found = [u for u in user_ids if int(u) not in guild.members]
        elif query == "":
            ids = list(guild.ids) if limit == 0 else guild.ids[:limit]
        else:
            prefix, want, ids = query.lower(), min(limit or 100, 100), []
            for uid in guild.ids:
                user = app.users.get(uid)
                name = user.username if user is not None else "user%d" % uid
                if name.lower().startswith(prefix):
                    ids.append(uid)
                    if len(ids) >= want:
                        break
        size = self.gw.cfg["chunk_size"]
        count = max(1, math.ceil(len(ids) / size))
        member_json = app.member_json
        for index in range(count):
            if not self.open or self.closed_by is not None or session.conn is not self:
                return
            part = ids[index * size:(index + 1) * size]
            d = {"guild_id": gid, "chunk_index": index, "chunk_count": count,
                 "members": [member_json(guild, uid) for uid in part
                             if uid in guild.members]}
            if index == 0 and not_found:
                d["not_found"] = not_found
            if presences:
                d["presences"] = []
            if nonce is not None:
                d["nonce"] = nonce
            session.dispatch("GUILD_MEMBERS_CHUNK", d)
            self.gw.stats["chunks_sent"] += 1
            # Build the next chunk only once this one is on its way.
            while self.queue.qsize() > 1 and self.open and session.conn is self:
                await asyncio.sleep(0.002)
            await asyncio.sleep(0)


class Gateway:
    """The Gateway of one MockDiscord app (mock_discord.MockDiscord)."""

    def __init__(self, app, host):
        self.app = app
        self.host = host
        self.url = self.resume_url = None
        self.servers = []
        self.conns = {}
        self.sessions = {}
        self.next_conn_id = 0
        self.reset()

    def reset(self):
        self.cfg = json.loads(json.dumps(DEFAULTS))
        self.stats = fresh_stats()
        self.refuse_resumes = 0
        self.identify_accepted = collections.deque()
        self.limit_reset_at = time.monotonic() + \
            self.cfg["session_start_limit"]["reset_after"] / 1000.0

    # ---- servers ---------------------------------------------------------

    async def start(self, port):
        options = dict(compression=None, ping_interval=None, max_size=1 << 20,
                       close_timeout=2)
        main = await websockets.serve(self._serve_gateway, self.host, port, **options)
        resume = await websockets.serve(self._serve_resume, self.host, 0, **options)
        self.servers = [main, resume]
        host = "[%s]" % self.host if ":" in self.host else self.host
        ports = [list(s.sockets)[0].getsockname()[1] for s in self.servers]
        self.url, self.resume_url = ["ws://%s:%d" % (host, p) for p in ports]
        return ports[0]

    async def stop(self):
        for conn in list(self.conns.values()):
            conn.cut()
        for server in self.servers:
            server.close()
        for server in self.servers:
            try:
                await asyncio.wait_for(server.wait_closed(), 3.0)
            except asyncio.TimeoutError:
                pass

    async def _serve_gateway(self, ws, path=None):
        await self.serve_connection(ws, "gateway")

    async def _serve_resume(self, ws, path=None):
        await self.serve_connection(ws, "resume")

    async def serve_connection(self, ws, url_kind):
        self.next_conn_id += 1
        conn = Conn(self, ws, url_kind, self.next_conn_id)
        self.conns[conn.id] = conn
        self.stats["connections_total"] += 1
        self.stats["connection_times"].append(conn.opened_at)
        try:
            await conn.run()
        except Exception:           # a mock bug: say so, close with 4000
            traceback.print_exc()
            try:
                await conn.close(4000, "mock error")
            except Exception:
                conn.cut()
        finally:
            conn.finish()
            self.conns.pop(conn.id, None)
            self.sweep_sessions()

    # ---- sessions and limits -------------------------------------------------

    def add_session(self, session):
        self.sessions[session.id] = session
        self.sweep_sessions()

    def drop_session(self, session):
        self.sessions.pop(session.id, None)
        if session.conn is not None:
            session.conn.session = None

    def sweep_sessions(self):
        now = time.monotonic()
        idle = []
        for session in list(self.sessions.values()):
            if session.expired(now):
                self.drop_session(session)
            elif session.conn is None:
                idle.append(session)
        for session in idle[:max(0, len(idle) - DISCONNECTED_SESSIONS_MAX)]:
            self.drop_session(session)

    def start_limit(self):
        """session_start_limit as GET /gateway/bot shows it now."""
        lim = self.cfg["session_start_limit"]
        now = time.monotonic()
        if now >= self.limit_reset_at:
            lim["remaining"] = lim["total"]
            self.limit_reset_at = now + lim["reset_after"] / 1000.0
        return {"total": lim["total"], "remaining": lim["remaining"],
                "reset_after": max(0, int((self.limit_reset_at - now) * 1000)),
                "max_concurrency": lim["max_concurrency"]}

    def take_identify(self):
        """Count an IDENTIFY against the limits: None or the refusal name."""
        lim = self.start_limit()
        if lim["remaining"] <= 0:
            return "start_limit"
        now = time.monotonic()
        window = self.identify_accepted
        while window and window[0] <= now - self.cfg["identify_window"]:
            window.popleft()
        if len(window) >= lim["max_concurrency"]:
            return "rate_limited"
        window.append(now)
        self.cfg["session_start_limit"]["remaining"] -= 1
        self.stats["identifies"] += 1
        self.stats["identify_times"].append(time.time())
        return None

    def record_close(self, conn, code, reason, by):
        entry = {"t": time.time(), "connection_id": conn.id,
                 "session_id": conn.session.id if conn.session else None,
                 "code": code, "reason": reason, "by": by}
        stats = self.stats
        stats["closes"].append(entry)
        stats["last_close"], stats["last_close_code"] = entry, code
        stats["close_codes"][str(code)] = stats["close_codes"].get(str(code), 0) + 1

    # ---- events from the mock's state ----------------------------------------

    def broadcast(self, t, d, guild_id, intent):
        for session in list(self.sessions.values()):
            if session.wants(guild_id, intent):
                session.dispatch(t, d)

    def member_changed(self, guild, uid, before):
        """After a member was added, changed or removed; before is the
        member's JSON before the change (None: it was not a member)."""
        if uid in guild.members:
            after = self.app.member_json(guild, uid)
            if before == after:
                return
            t = "GUILD_MEMBER_ADD" if before is None else "GUILD_MEMBER_UPDATE"
            d = dict(after, guild_id=guild.id)
        elif before is not None:
            t, d = "GUILD_MEMBER_REMOVE", {"guild_id": guild.id, "user": before["user"]}
        else:
            return
        self.broadcast(t, d, guild.id, GUILD_MEMBERS)

    def guild_created(self, guild, replaced):
        for session in list(self.sessions.values()):
            if session.wants(guild.id, GUILDS):
                if replaced:
                    session.dispatch("GUILD_DELETE", {"id": guild.id, "unavailable": True})
                session.dispatch("GUILD_CREATE", self.guild_payload(guild, session))

    def on_reset(self):
        """POST /_mock/reset: the bot leaves every guild; defaults again."""
        for gid in list(self.app.guilds):
            self.broadcast("GUILD_DELETE", {"id": gid}, gid, GUILDS)
        self.reset()
        for session in list(self.sessions.values()):
            if session.conn is None:
                self.drop_session(session)
        for conn in self.conns.values():
            conn.acks, conn.muted = True, False

    def guild_payload(self, guild, session):
        app = self.app
        count = len(guild.members)
        large = count > session.large_threshold
        roles = [{"id": rid, "name": "@everyone" if rid == guild.id else "role-" + rid,
                  "color": 0, "hoist": False, "icon": None, "unicode_emoji": None,
                  "position": 0 if rid == guild.id else pos + 1,
                  "permissions": "0", "managed": False, "mentionable": False,
                  "flags": 0}
                 for pos, rid in enumerate([guild.id] + sorted(guild.roles))]
        return {
            "id": guild.id, "name": guild.name, "icon": None, "splash": None,
            "owner_id": app.client_id, "afk_channel_id": None, "afk_timeout": 300,
            "verification_level": 0, "default_message_notifications": 0,
            "explicit_content_filter": 0, "roles": roles, "emojis": [],
            "features": [], "mfa_level": 0, "application_id": None,
            "system_channel_id": None, "system_channel_flags": 0,
            "rules_channel_id": None, "vanity_url_code": None,
            "description": None, "banner": None, "premium_tier": 0,
            "preferred_locale": "en-US", "nsfw_level": 0, "stickers": [],
            "premium_progress_bar_enabled": False,
            "joined_at": guild.default_joined_at, "large": large,
            "unavailable": False, "member_count": count, "voice_states": [],
            "members": [] if large else [app.member_json(guild, uid) for uid in guild.ids],
            "channels": [], "threads": [], "presences": [],
            "stage_instances": [], "guild_scheduled_events": [],
            "soundboard_sounds": [],
        }

    def bot_info(self):
        return {"url": self.url, "shards": 1, "session_start_limit": self.start_limit()}

    # ---- control API -----------------------------------------------------------

    def control(self, method, rest, body):
        """/_mock/gateway/<rest>; returns (status, JSON object)."""
        what = rest[0] if rest else ""
        route = {("", "GET"): self.c_info, ("config", "GET"): self.c_config,
                 ("config", "POST"): self.c_config, ("faults", "POST"): self.c_faults,
                 ("dispatch", "POST"): self.c_dispatch, ("stats", "GET"): self.c_stats,
                 ("stats", "DELETE"): self.c_stats}.get((what, method))
        if route is None:
            known = what in ("", "config", "faults", "dispatch", "stats")
            return (405, {"error": "method not allowed"}) if known else \
                (404, {"error": "unknown gateway control route"})
        return 200, route(method, body)

    def c_info(self, method, body):
        return {"url": self.url, "resume_url": self.resume_url, "config": self.config_json()}

    def config_json(self):
        cfg = json.loads(json.dumps(self.cfg))
        cfg["session_start_limit"] = self.start_limit()
        return cfg

    def c_config(self, method, body):
        if method == "POST":
            self.apply_config(body)
        return self.config_json()

    def apply_config(self, body):
        if not isinstance(body, dict):
            raise ValueError("config must be a JSON object")
        unknown = set(body) - set(DEFAULTS)
        if unknown:
            raise ValueError("unknown gateway config key(s): %s" % ", ".join(sorted(unknown)))
        new = json.loads(json.dumps(self.cfg))
        for key, value in body.items():
            if key == "command_limit" or key == "session_start_limit":
                if not isinstance(value, dict) or set(value) - set(DEFAULTS[key]):
                    raise ValueError("%s takes %s" % (key, ", ".join(DEFAULTS[key])))
                for sub, num in value.items():
                    if not isinstance(num, (int, float)) or isinstance(num, bool) or num < 0:
                        raise ValueError("%s.%s must be a number >= 0" % (key, sub))
                    new[key][sub] = num
            elif key == "ack_heartbeats":
                new[key] = bool(value)
            elif isinstance(value, (int, float)) and not isinstance(value, bool) and value >= 0:
                new[key] = value
            else:
                raise ValueError("%s must be a number >= 0" % key)
        if new["heartbeat_interval"] < 1 or new["chunk_size"] < 1 \
                or new["command_limit"]["count"] < 1 or new["command_limit"]["window"] <= 0 \
                or new["session_start_limit"]["max_concurrency"] < 1:
            raise ValueError("heartbeat_interval, chunk_size, command_limit and "
                             "max_concurrency must be positive")
        for key in ("heartbeat_interval", "hello_delay_ms", "resume_buffer",
                    "resume_buffer_bytes", "chunk_size", "privileged_intents",
                    "required_intents", "max_payload"):
            new[key] = int(new[key])
        self.cfg = new
        if "reset_after" in body.get("session_start_limit", {}):
            self.limit_reset_at = time.monotonic() + \
                new["session_start_limit"]["reset_after"] / 1000.0

    def targets(self, spec):
        conns = list(self.conns.values())
        if "connection_id" in spec:
            conns = [c for c in conns if c.id == spec["connection_id"]]
        if "session_id" in spec:
            conns = [c for c in conns if c.session and c.session.id == spec["session_id"]]
        return [c for c in conns if c.closed_by is None]

    def c_faults(self, method, body):
        specs = body if isinstance(body, list) else [body]
        affected = []
        for spec in specs:
            if not isinstance(spec, dict):
                raise ValueError("a fault must be an object")
            action = spec.get("action")
            if action == "refuse_resume":
                self.refuse_resumes += int(spec.get("count", 1))
                continue
            if action not in ("drop", "close", "reconnect", "invalid_session",
                              "heartbeat", "stop_acks", "resume_acks", "mute", "unmute"):
                raise ValueError("unknown fault action %r" % (action,))
            code = spec.get("code", 4000)
            if action == "close" and not (is_int(code) and (code == 1000 or 3000 <= code <= 4999)):
                raise ValueError("code must be 1000 or 3000..4999")
            if not isinstance(spec.get("reason", ""), str):
                raise ValueError("reason must be a string")
            for conn in self.targets(spec):
                affected.append(conn.id)
                if action == "drop":
                    conn.drop()
                elif action == "close":
                    resumable = spec.get("resumable")
                    conn.spawn(conn.close(code, spec.get("reason"),
                                          None if resumable is None else bool(resumable)))
                elif action == "reconnect":
                    conn.send_op(OP_RECONNECT)
                elif action == "invalid_session":
                    resumable = bool(spec.get("resumable", False))
                    conn.send_op(OP_INVALID_SESSION, resumable)
                    if not resumable and conn.session is not None:
                        self.drop_session(conn.session)
                elif action == "heartbeat":
                    conn.send_op(OP_HEARTBEAT)
                elif action in ("stop_acks", "resume_acks"):
                    conn.acks = action == "resume_acks"
                else:
                    conn.muted = action == "mute"
        return {"affected": affected, "refuse_resumes": self.refuse_resumes}

    def c_dispatch(self, method, body):
        if not isinstance(body, dict) or not isinstance(body.get("t"), str):
            raise ValueError("dispatch needs {t, d}")
        sent = []
        for session in list(self.sessions.values()):
            if body.get("session_id") in (None, session.id):
                session.dispatch(body["t"], body.get("d"))
                sent.append(session.id)
        return {"sessions": sent}

    def c_stats(self, method, body):
        if method == "DELETE":
            self.stats = fresh_stats()
        out = {k: list(v) if isinstance(v, collections.deque) else v
               for k, v in self.stats.items()}
        out["connections_open"] = len(self.conns)
        out["connections"] = [c.to_json() for c in self.conns.values()]
        out["sessions"] = [s.to_json() for s in self.sessions.values()]
        out["session_start_limit"] = self.start_limit()
        return json.loads(json.dumps(out))
