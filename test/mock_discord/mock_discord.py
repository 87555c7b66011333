#!/usr/bin/python3
"""
mock_discord.py - an in-memory mock of the Discord REST API v10 and its OAuth2
endpoints, used by the lhdiscord test suite (lhdiscord.api_base_url is pointed
at http://127.0.0.1:<port>/api/v10).

Python 3.11, standard library only. One asyncio event loop with a hand-written
HTTP/1.1 parser (keep-alive, pipelining, Content-Length and chunked request
bodies, Expect: 100-continue, Connection: close), so it can serve many
thousands of small requests per second on one core.

Usage:
    mock_discord.py --host 127.0.0.1 --port 0 --port-file FILE [--log FILE]
                    [--bot-token TOKEN] [--client-id ID] [--client-secret SECRET]
                    [--gateway-port 0 [--gateway-port-file FILE]]

--gateway-port enables the Gateway (WebSocket, gateway.py, needs Debian's
python3-websockets; without the flag that module is never imported) on the
same host and event loop, sharing the guild and member state; 0 picks a free
port. Its port is written to --gateway-port-file (like --port-file, and
before the REST port file appears) and its URL is in GET /gateway/bot.

With --port 0 a free port is chosen; once the server is listening the port
number is written to --port-file (temp file + rename, so readers never see a
partial file). SIGTERM or SIGINT stops the server cleanly (exit status 0).

Emulated Discord routes (all under /api/v10 unless noted):
    PUT|DELETE /guilds/{guild_id}/members/{user_id}/roles/{role_id}   204
    GET        /guilds/{guild_id}/members/{user_id}                   200 member
    GET        /guilds/{guild_id}/members?limit=&after=               200 [member]
    PUT        /guilds/{guild_id}/members/{user_id}   (access_token)  201 / 204
    POST       /users/@me/channels                                    200 DM channel
    POST       /channels/{channel_id}/messages    (nonce semantics)   200 message
    GET        /users/@me                       (Bot or Bearer auth)  200 user
    POST       /oauth2/token                  (form, client auth)     200 tokens
    GET        /oauth2/authorize     (server root, not /api/v10)      302 redirect
    GET        /gateway/bot   (only with --gateway-port)              200 {url,
                                      shards, session_start_limit}
    GET        /gateway       (only with --gateway-port, no auth)     200 {url}
Bot routes need "Authorization: Bot <token>"; errors use Discord's JSON error
bodies and codes. Per-route buckets and the global limit send X-RateLimit-*
headers and 429s the way Discord documents them.

Control API (no auth, JSON in and out, never recorded):
    GET    /_mock/health                      {"ok": true}
    POST   /_mock/reset                       clear all state; body may carry
                                              any /_mock/config field
    GET    /_mock/config                      current config (secrets hidden)
    POST   /_mock/config                      bot_token, client_id, client_secret,
                                              global_limit, buckets, header_case,
                                              latency_ms, down, nonce_window,
                                              record, record_limit,
                                              require_content_length
    POST   /_mock/guilds                      {id, name, roles, auto_roles,
                                              privileged_roles, members, generate}
    GET    /_mock/guilds/{guild_id}           summary of a guild
    POST   /_mock/users                       {id, username, global_name, avatar,
                                              dms_closed, bot}
    POST   /_mock/members                     {guild_id, id, roles, nick, ...}
    GET    /_mock/members/{guild_id}/{user_id}  {"roles": [...]} or 404
    DELETE /_mock/members/{guild_id}/{user_id}  the member leaves
    PUT|DELETE /_mock/members/{guild_id}/{user_id}/roles/{role_id}
                                              a moderator gives/takes a role
    GET|POST|DELETE /_mock/faults             list / add rule(s) / clear
    POST   /_mock/oauth/next_user             {user_id, sticky}
    POST   /_mock/oauth/codes                 {user_id, redirect_uri, scope,
                                              expires_in} -> {"code"}
    POST   /_mock/oauth/tokens                {user_id, scope, expires_in}
    POST   /_mock/oauth/expire                {refresh_token} | {access_token} |
                                              {all: true} | {all_access: true}
    GET    /_mock/requests?since=&path_prefix=&method=&limit=
    GET    /_mock/messages                    messages in creation order
    GET    /_mock/stats                       counters, incl. max_per_second
    GET    /_mock/gateway                     Gateway {url, resume_url, config}
    GET|POST /_mock/gateway/config            heartbeat_interval, hello_delay_ms,
                                              ack_heartbeats, session_start_limit,
                                              command_limit, privileged_intents, ...
    POST   /_mock/gateway/faults              {action: drop | close (code,
                                              reason, resumable) | reconnect |
                                              invalid_session (resumable) |
                                              heartbeat | stop_acks | resume_acks |
                                              mute | unmute | refuse_resume (count),
                                              session_id?, connection_id?}
    POST   /_mock/gateway/dispatch            {t, d, session_id?} a raw event
    GET|DELETE /_mock/gateway/stats           identifies, resumes, connections,
                                              commands per op, heartbeats, closes
                                              and last_close_code, with times
The docstrings of the c_* methods give the exact fields; gateway.py's
docstring gives the Gateway's protocol, events, config, faults and counters.
With the Gateway on, member changes made through the control API (members,
their roles, DELETE) and by the bot's REST calls (role PUT/DELETE, guild
member add) are sent as GUILD_MEMBER_ADD/UPDATE/REMOVE, a new guild as
GUILD_CREATE, and /_mock/reset sends GUILD_DELETEs and resets the Gateway.

Rate limits (POST /_mock/config):
    "buckets": {"default": {"limit": 10, "window": 1.0},
                "PUT /guilds/{guild_id}/members/{user_id}/roles/{role_id}":
                    {"limit": 5, "window": 1.0}}       (null = off)
        Fixed windows per (route, guild_id or channel_id). Role add and
        remove share one bucket. Other names: "GET /guilds/{guild_id}/members",
        "GET|PUT /guilds/{guild_id}/members/{user_id}",
        "POST /users/@me/channels", "POST /channels/{channel_id}/messages".
    "global_limit": N   at most N bot requests in any sliding second (0 = off)
    "header_case": "canonical" | "lower" | "odd"   spelling of X-RateLimit-*
        and Retry-After header names

Fault rules (POST /_mock/faults, one object or a list; first match wins):
    {"method": "PUT", "path": "/roles/\\d+$",      optional filters (regex
                                                  searched in the path)
     "status": 503, "code": 0, "message": "...",  injected error response
     "body": "<html>...", "headers": {...},       raw body / extra headers
     "retry_after": 2.5, "global": true,          for "status": 429
     "query": "after=[1-9]",                      optional regex on the query string
     "count": 1,                                  matches to affect; -1 = until
                                                  DELETE /_mock/faults
     "latency_ms": 300,                           delay before answering
     "drop": true | "reset",                      close (FIN) / reset (RST)
                                                  without answering
     "hang": true,                                never answer
     "body_bytes": 104857600,                     a generated body of exactly
                                                  this many bytes (JSON
                                                  {"padding":"xxx..."}),
                                                  status 200 unless given
     "chunked": true,                             with body_bytes: sent with
                                                  Transfer-Encoding: chunked,
                                                  no Content-Length
     "process": true}                             still apply the request (a
                                                  lost response); implied for
                                                  latency-only rules
"down": true in the config answers every bot route with 502; "latency_ms"
there delays every non-control response.

Fault recipes:
    {"status": 429, "retry_after": 1e9, "global": true}   absurd global 429:
        body retry_after 1000000000.0, Retry-After: 1000000000,
        X-RateLimit-Global: true, X-RateLimit-Scope: global; without
        "global" the same as a per-route 429 (scope "user"); add
        "headers": {"X-RateLimit-Reset-After": "1000000000.000"} for an
        absurd reset-after as well.
    {"method": "PUT", "path": "/roles/\\d+$", "status": 200,
     "body": "<html>...</html>"}                a 200 text/html answer where
        Discord answers 204 (the role is not changed unless "process").
    {"drop": "reset", "count": 3}               three connection resets (RST);
        "drop": true closes with FIN.
    {"latency_ms": 2000, "count": 5}            five slow (but applied) calls.
    POST /_mock/config {"down": true}           502 on every bot route.
A body_bytes body is generated while it is sent, one shared 256 KiB buffer
at a time and only while the socket takes it (flow control), so a 100 MB
answer costs no memory; when the client closes mid-body the mock stops at
once. /_mock/stats counts streams_started, streams_completed,
streams_abandoned and stream_bytes_sent (body bytes handed to the socket).

Secrets (tokens, client secrets, OAuth codes) are never written to the request
records or to the --log file: Authorization headers become
"Bot <redacted:ok>", "Bot <redacted:bad>" or "Bearer <redacted>", and the
values of access_token, refresh_token, client_secret and code are replaced by
"<redacted>" wherever they appear in recorded bodies or query strings.
"""

import argparse
import array
import asyncio
import base64
import bisect
import collections
import email.utils
import hashlib
import hmac
import http
import ipaddress
import json
import math
import os
import re
import secrets
import signal
import socket
import struct
import sys
import time
import traceback
import urllib.parse

API_PREFIX = "/api/v10"
DISCORD_EPOCH_MS = 1420070400000

MAX_HEAD_BYTES = 64 * 1024
# Arrival timestamps kept for max_per_second; beyond this many they are
# folded (see fold_arrivals) so that very long benchmarks use bounded memory.
ARRIVALS_FOLD = 4_000_000
MAX_BODY_BYTES = 16 * 1024 * 1024

# When per-route limits are switched off, bucketed routes still send
# X-RateLimit-* headers, with this (unreachable) limit.
UNLIMITED_BUCKET = (1_000_000, 1.0)

# Keys whose values are secrets: replaced by "<redacted>" in records and logs.
SECRET_KEYS = frozenset({"access_token", "refresh_token", "client_secret",
                         "code", "token", "password"})

UA_RE = re.compile(r"^DiscordBot \(.+, .+\)")

DEFAULT_BOT_TOKEN = "mock-bot-token"
DEFAULT_CLIENT_ID = "1187343715209408512"
DEFAULT_CLIENT_SECRET = "mock-client-secret"

DEFAULT_SCOPE = "identify guilds.join"
OAUTH_CODE_TTL = 600.0          # Discord authorization codes live 10 minutes
ACCESS_TOKEN_TTL = 604800       # expires_in Discord returns for access tokens

JSON_CT = "application/json"
EMPTY = b""

# Responses Discord counts towards its invalid-request limit, and the
# /_mock/stats counter for each.
INVALID_STATUS_COUNTERS = {401: "unauthorized_401", 403: "forbidden_403",
                           429: "rate_limited_429"}

# Response actions decided by the dispatcher.
SEND, DROP, RESET, HANG = "send", "drop", "reset", "hang"

# --------------------------------------------------------------------------
# Route and bucket tables
# --------------------------------------------------------------------------

ROLE_BUCKET = "PUT /guilds/{guild_id}/members/{user_id}/roles/{role_id}"

# Bucket names are the keys accepted in the "buckets" config. Aliases let the
# config name the DELETE variant of the role route, which shares the bucket.
BUCKET_NAMES = (
    ROLE_BUCKET,
    "GET /guilds/{guild_id}/members/{user_id}",
    "GET /guilds/{guild_id}/members",
    "PUT /guilds/{guild_id}/members/{user_id}",
    "POST /users/@me/channels",
    "POST /channels/{channel_id}/messages",
)
BUCKET_ALIASES = {
    "DELETE /guilds/{guild_id}/members/{user_id}/roles/{role_id}": ROLE_BUCKET,
}

# (method, path template, handler method name, bucket name, auth kind)
# auth kind: "bot" = Bot token required; "bot_or_bearer" = the handler checks;
# "none" = no bot auth (OAuth endpoints).
ROUTE_TABLE = (
    ("PUT", API_PREFIX + "/guilds/{guild_id}/members/{user_id}/roles/{role_id}",
     "h_add_role", ROLE_BUCKET, "bot"),
    ("DELETE", API_PREFIX + "/guilds/{guild_id}/members/{user_id}/roles/{role_id}",
     "h_remove_role", ROLE_BUCKET, "bot"),
    ("GET", API_PREFIX + "/guilds/{guild_id}/members/{user_id}",
     "h_get_member", "GET /guilds/{guild_id}/members/{user_id}", "bot"),
    ("PUT", API_PREFIX + "/guilds/{guild_id}/members/{user_id}",
     "h_add_member", "PUT /guilds/{guild_id}/members/{user_id}", "bot"),
    ("GET", API_PREFIX + "/guilds/{guild_id}/members",
     "h_list_members", "GET /guilds/{guild_id}/members", "bot"),
    ("POST", API_PREFIX + "/users/@me/channels",
     "h_create_dm", "POST /users/@me/channels", "bot"),
    ("GET", API_PREFIX + "/users/@me", "h_users_me", None, "bot_or_bearer"),
    ("POST", API_PREFIX + "/channels/{channel_id}/messages",
     "h_create_message", "POST /channels/{channel_id}/messages", "bot"),
    ("POST", API_PREFIX + "/oauth2/token", "h_oauth_token", None, "none"),
    ("GET", "/oauth2/authorize", "h_oauth_authorize", None, "none"),
)
# Routes that exist only with the Gateway on (--gateway-port).
GATEWAY_ROUTE_TABLE = (
    ("GET", API_PREFIX + "/gateway/bot", "h_gateway_bot", None, "bot"),
    ("GET", API_PREFIX + "/gateway", "h_gateway", None, "none"),
)

# Rate-limit header names in the three supported spellings.
_RL_CANONICAL = {
    "limit": "X-RateLimit-Limit",
    "remaining": "X-RateLimit-Remaining",
    "reset": "X-RateLimit-Reset",
    "reset_after": "X-RateLimit-Reset-After",
    "bucket": "X-RateLimit-Bucket",
    "global": "X-RateLimit-Global",
    "scope": "X-RateLimit-Scope",
    "retry_after": "Retry-After",
}
RL_HEADER_NAMES = {
    "canonical": _RL_CANONICAL,
    "lower": {k: v.lower() for k, v in _RL_CANONICAL.items()},
    "odd": {
        "limit": "X-RATELIMIT-LIMIT",
        "remaining": "x-ratelimit-remaining",
        "reset": "x-RateLimit-RESET",
        "reset_after": "X-ratelimit-reset-AFTER",
        "bucket": "X-RATELIMIT-BUCKET",
        "global": "x-ratelimit-global",
        "scope": "X-Ratelimit-Scope",
        "retry_after": "retry-AFTER",
    },
}


def bucket_hash(name):
    """Opaque, stable bucket id per route template (like Discord's hashes)."""
    return hashlib.sha1(("mock-discord:" + name).encode()).hexdigest()[:32]


# --------------------------------------------------------------------------
# Small helpers
# --------------------------------------------------------------------------

def dumps(obj):
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False)


def iso_time(t):
    """Discord's timestamp format: 2024-01-02T03:04:05.678000+00:00."""
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) + \
        ".%06d+00:00" % int((t % 1) * 1_000_000)


def is_snowflake(value):
    return isinstance(value, str) and 0 < len(value) <= 20 and \
        value.isascii() and value.isdigit()


def rand_token(length=30):
    """Random alphanumeric string, like Discord's codes and tokens."""
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"
    return "".join(secrets.choice(alphabet) for _ in range(length))


def redact(value):
    """Deep copy of a parsed body/query with secret values replaced."""
    if isinstance(value, dict):
        return {k: ("<redacted>" if k in SECRET_KEYS else redact(v))
                for k, v in value.items()}
    if isinstance(value, list):
        return [redact(v) for v in value]
    return value


def first_values(qs):
    """Parse a query/form string into {name: value} (list if repeated)."""
    out = {}
    for k, v in urllib.parse.parse_qsl(qs, keep_blank_values=True):
        if k in out:
            prev = out[k]
            out[k] = prev + [v] if isinstance(prev, list) else [prev, v]
        else:
            out[k] = v
    return out


class SnowflakeGen:
    """Generates realistic, strictly increasing Discord snowflakes."""

    def __init__(self):
        self.last = 0

    def next(self):
        ms = int(time.time() * 1000) - DISCORD_EPOCH_MS
        value = (ms << 22) | (1 << 17) | (1 << 12)
        if value <= self.last:
            value = self.last + 1
        self.last = value
        return str(value)


_date_cache = [0, ""]


def http_date():
    now = int(time.time())
    if _date_cache[0] != now:
        _date_cache[0] = now
        _date_cache[1] = email.utils.formatdate(now, usegmt=True)
    return _date_cache[1]


_STATUS_LINES = {}


def status_line(status):
    line = _STATUS_LINES.get(status)
    if line is None:
        try:
            phrase = http.HTTPStatus(status).phrase
        except ValueError:
            phrase = "Unknown"
        line = "HTTP/1.1 %d %s\r\n" % (status, phrase)
        _STATUS_LINES[status] = line
    return line


# --------------------------------------------------------------------------
# Replies and errors
# --------------------------------------------------------------------------

class Reply:
    """A response to send: status, body bytes, content type, extra headers,
    and the Discord error code (for the request record). stream, when set,
    is (number of bytes, chunked): the body is generated while it is sent
    (see HttpProtocol.pump) instead of being held in body."""
    __slots__ = ("status", "body", "ctype", "headers", "code", "stream")

    def __init__(self, status, body=EMPTY, ctype=None, headers=None, code=None,
                 stream=None):
        self.status = status
        self.body = body
        self.ctype = ctype
        self.headers = headers if headers is not None else []
        self.code = code
        self.stream = stream


def json_reply(status, obj, headers=None, code=None):
    return Reply(status, dumps(obj).encode(), JSON_CT, headers, code)


def discord_error(status, code, message, errors=None, headers=None):
    body = {"message": message, "code": code}
    if errors is not None:
        body["errors"] = errors
    return json_reply(status, body, headers, code)


class ApiError(Exception):
    """Raised by handlers; carries the complete error Reply."""

    def __init__(self, reply):
        super().__init__(reply.status)
        self.reply = reply


def fail(status, code, message, errors=None):
    raise ApiError(discord_error(status, code, message, errors))


def field_error(field, err_code, message):
    """One entry of Discord's nested "errors" object for a top-level field."""
    return {field: {"_errors": [{"code": err_code, "message": message}]}}


def fail_form(errors):
    fail(400, 50035, "Invalid Form Body", errors)


def snowflake_param(name, value):
    """Validate a snowflake in a path; Discord answers 400/50035 otherwise."""
    if not is_snowflake(value):
        fail_form(field_error(name, "NUMBER_TYPE_COERCE",
                              'Value "%s" is not snowflake.' % value))
    return value


def not_found():
    return discord_error(404, 0, "404: Not Found")


def unauthorized():
    return discord_error(401, 0, "401: Unauthorized")


# --------------------------------------------------------------------------
# In-memory Discord state
# --------------------------------------------------------------------------

class User:
    __slots__ = ("id", "username", "global_name", "avatar", "bot", "dms_closed")

    def __init__(self, uid, username=None, global_name=None, avatar=None,
                 bot=False, dms_closed=False):
        self.id = uid
        self.username = username or "user%d" % uid
        self.global_name = global_name
        self.avatar = avatar
        self.bot = bot
        self.dms_closed = dms_closed

    def to_json(self):
        d = {
            "id": str(self.id), "username": self.username,
            "global_name": self.global_name, "avatar": self.avatar,
            "discriminator": "0", "public_flags": 0, "flags": 0,
            "banner": None, "accent_color": None,
            "avatar_decoration_data": None, "collectibles": None,
            "primary_guild": None,
        }
        if self.bot:
            d["bot"] = True
        return d


class MemberInfo:
    """Per-member details that differ from the guild defaults."""
    __slots__ = ("nick", "joined_at", "deaf", "mute")

    def __init__(self, nick=None, joined_at=None, deaf=False, mute=False):
        self.nick = nick
        self.joined_at = joined_at
        self.deaf = deaf
        self.mute = mute


class Guild:
    """A guild. Members are stored compactly so that 250,000 of them are
    cheap: members maps int user id -> tuple of role ids (replaced, never
    mutated), ids is the sorted list of member ids used with bisect for
    List Guild Members, and info holds the few members with details."""

    def __init__(self, gid, name=None, roles=(), privileged_roles=(),
                 auto_roles=False):
        self.id = gid
        self.name = name or "Guild %s" % gid
        self.roles = set(roles)
        self.privileged_roles = set(privileged_roles)
        self.roles |= self.privileged_roles
        self.auto_roles = auto_roles
        self.members = {}
        self.ids = []
        self.info = {}
        self.default_joined_at = iso_time(time.time() - 86400 * 30)

    def assignable_role(self, role):
        """Discord's checks of a role the bot assigns: it must exist (or be
        created, with auto_roles) and sit below the bot's own role."""
        if role not in self.roles:
            if not self.auto_roles:
                fail(404, 10011, "Unknown Role")
            self.roles.add(role)
        if role in self.privileged_roles:
            fail(403, 50013, "Missing Permissions")

    def add_member(self, uid, roles, info=None):
        if uid not in self.members:
            bisect.insort(self.ids, uid)
        self.members[uid] = tuple(roles)
        if info is not None:
            self.info[uid] = info
        else:
            self.info.pop(uid, None)

    def remove_member(self, uid):
        if uid not in self.members:
            return False
        del self.members[uid]
        del self.ids[bisect.bisect_left(self.ids, uid)]
        self.info.pop(uid, None)
        return True


class DMChannel:
    __slots__ = ("id", "recipient_id", "last_message_id")

    def __init__(self, cid, recipient_id):
        self.id = cid
        self.recipient_id = recipient_id
        self.last_message_id = None


class OAuthGrant:
    """An issued authorization code, access token or refresh token."""
    __slots__ = ("user_id", "scope", "scopes", "redirect_uri", "expires_at")

    def __init__(self, user_id, scope, redirect_uri=None, expires_at=None):
        self.user_id = user_id
        self.scope = scope
        self.scopes = frozenset(scope.split())
        self.redirect_uri = redirect_uri
        self.expires_at = expires_at      # wall-clock seconds, None = never

    def valid(self, now):
        return self.expires_at is None or now < self.expires_at


class BucketState:
    """Fixed window that starts with the first request after a reset."""
    __slots__ = ("reset_at", "used")

    def __init__(self, reset_at):
        self.reset_at = reset_at          # time.monotonic() value
        self.used = 0


class FaultRule:
    """A fault-injection rule (see /_mock/faults)."""
    FIELDS = {"method", "path", "query", "status", "code", "message", "body", "headers",
              "count", "latency_ms", "drop", "hang", "process", "retry_after",
              "global", "scope", "body_bytes", "chunked"}

    def __init__(self, rid, spec):
        unknown = set(spec) - self.FIELDS
        if unknown:
            raise ValueError("unknown fault field(s): %s" % ", ".join(sorted(unknown)))
        self.id = rid
        self.method = spec.get("method")
        self.method = self.method.upper() if self.method not in (None, "*") else None
        self.path = spec.get("path")
        self.path_re = re.compile(self.path) if self.path else None
        # Optional regex searched in the raw query string, e.g. "after=[1-9]"
        # to fail every page of a member listing but the first.
        self.query_re = re.compile(spec["query"]) if spec.get("query") else None
        self.status = spec.get("status")
        if self.status is not None and not (isinstance(self.status, int)
                                            and 100 <= self.status <= 599):
            raise ValueError("status must be an HTTP status code")
        self.code = spec.get("code")
        self.message = spec.get("message")
        self.body = spec.get("body")
        self.headers = spec.get("headers") or {}
        # A generated body of body_bytes bytes, streamed (never built in
        # memory); the status defaults to 200.
        self.body_bytes = spec.get("body_bytes")
        if self.body_bytes is not None:
            if isinstance(self.body_bytes, bool) or not isinstance(self.body_bytes, int) \
                    or self.body_bytes < 0:
                raise ValueError("body_bytes must be an integer >= 0")
            if self.body is not None:
                raise ValueError("body and body_bytes are exclusive")
            if self.status is None:
                self.status = 200
        self.chunked = spec.get("chunked", False)
        if self.chunked not in (True, False):
            raise ValueError("chunked must be true or false")
        if self.chunked and self.body_bytes is None:
            raise ValueError("chunked needs body_bytes")
        self.count = int(spec.get("count", 1))
        if self.count == 0 or self.count < -1:
            raise ValueError("count must be -1 (until cleared) or >= 1")
        self.latency = float(spec.get("latency_ms", 0)) / 1000.0
        drop = spec.get("drop", False)
        if drop not in (True, False, "reset"):
            raise ValueError('drop must be true, false or "reset"')
        self.drop = drop
        self.hang = bool(spec.get("hang", False))
        # Latency-only rules always let the request through; the others only
        # when "process" is true (the state changes but the client sees the
        # fault: a lost response).
        self.latency_only = self.status is None and not drop and not self.hang
        if self.latency_only and not self.latency:
            raise ValueError("a fault needs status, drop, hang or latency_ms")
        self.process = self.latency_only or bool(spec.get("process", False))
        self.retry_after = float(spec.get("retry_after", 1.0))
        self.is_global = bool(spec.get("global", False))
        self.scope = spec.get("scope", "global" if self.is_global else "user")
        self.spec = spec

    def matches(self, method, path, query_string=""):
        if self.method is not None and self.method != method:
            return False
        if self.query_re is not None and self.query_re.search(query_string or "") is None:
            return False
        return self.path_re is None or self.path_re.search(path) is not None

    def reply(self, names):
        """The injected response."""
        status = self.status
        headers = [(str(k), str(v)) for k, v in self.headers.items()]
        if self.body_bytes is not None:
            return Reply(status, EMPTY, JSON_CT, headers,
                         stream=(self.body_bytes, self.chunked))
        if self.body is not None:
            return Reply(status, str(self.body).encode(), "text/html", headers)
        if status == 429 and self.code is None:
            headers += [(names["retry_after"], str(math.ceil(self.retry_after))),
                        (names["scope"], self.scope)]
            if self.is_global:
                headers.append((names["global"], "true"))
            return json_reply(429, {"message": "You are being rate limited.",
                                    "retry_after": self.retry_after,
                                    "global": self.is_global, "code": 0},
                              headers, 0)
        try:
            phrase = http.HTTPStatus(status).phrase
        except ValueError:
            phrase = "Error"
        code = self.code if self.code is not None else 0
        message = self.message or "%d: %s" % (status, phrase)
        return discord_error(status, code, message, headers=headers)

    def to_json(self):
        d = dict(self.spec)
        d["id"] = self.id
        d["remaining"] = self.count
        return d


class Request:
    __slots__ = ("method", "target", "path", "query_string", "version",
                 "headers", "body", "keep_alive", "parsed", "auth_ok")

    def __init__(self, method, target, path, query_string, version, headers,
                 body, keep_alive):
        self.method = method
        self.target = target
        self.path = path
        self.query_string = query_string
        self.version = version
        self.headers = headers
        self.body = body
        self.keep_alive = keep_alive
        self.parsed = None          # parsed body, cached for the record
        self.auth_ok = None

    def query(self):
        return first_values(self.query_string) if self.query_string else {}


class Route:
    __slots__ = ("method", "template", "name", "parts", "handler", "bucket",
                 "bucket_hash", "auth")

    def __init__(self, method, template, handler, bucket, auth):
        self.method = method
        self.template = template
        # Name without the /api/v10 prefix, e.g. "GET /users/@me".
        self.name = method + " " + (template[len(API_PREFIX):]
                                    if template.startswith(API_PREFIX + "/")
                                    else template)
        # Each part is (literal, None) or (None, parameter name).
        self.parts = tuple((None, p[1:-1]) if p.startswith("{") else (p, None)
                           for p in template.split("/"))
        self.handler = handler
        self.bucket = bucket
        self.bucket_hash = bucket_hash(bucket) if bucket else None
        self.auth = auth


# --------------------------------------------------------------------------
# The mock application
# --------------------------------------------------------------------------

class MockDiscord:
    CONFIG_KEYS = ("bot_token", "client_id", "client_secret", "global_limit",
                   "buckets", "header_case", "latency_ms", "down",
                   "nonce_window", "record", "record_limit",
                   "require_content_length")

    def __init__(self, bot_token, client_id, client_secret, log_path=None):
        self.cli_credentials = (bot_token, client_id, client_secret)
        self.log_fp = open(log_path, "a", buffering=1, encoding="utf-8") \
            if log_path else None
        self.snowflakes = SnowflakeGen()
        self.seq = 0                # never reset, so "since" stays meaningful
        self.connections = set()
        self.connections_total = 0
        # Routes grouped by number of path segments for quick matching.
        self.routes = {}
        self.add_routes(ROUTE_TABLE)
        self.gateway = None         # a gateway.Gateway once attach_gateway ran
        self.reset(*self.cli_credentials)

    def add_routes(self, table):
        for method, template, handler, bucket, auth in table:
            parts_len = len(template.split("/"))
            group = self.routes.setdefault(parts_len, {})
            group.setdefault(template, {})[method] = Route(
                method, template, getattr(self, handler), bucket, auth)

    # ---- Gateway hooks (no-ops while the Gateway is off) -------------------

    def attach_gateway(self, gateway):
        self.gateway = gateway
        self.add_routes(GATEWAY_ROUTE_TABLE)

    def member_before(self, guild, uid):
        """The member's JSON before a change, for member_changed."""
        if self.gateway is None or uid not in guild.members:
            return None
        return self.member_json(guild, uid)

    def member_changed(self, guild, uid, before):
        if self.gateway is not None:
            self.gateway.member_changed(guild, uid, before)

    # ---- state and configuration -----------------------------------------

    def reset(self, bot_token, client_id, client_secret):
        """Forget everything except the given credentials."""
        self.bot_token = bot_token
        self.client_id = client_id
        self.client_secret = client_secret
        self.bot_auth = "Bot " + bot_token
        self.global_limit = 0
        self.buckets_config = None
        self.bucket_specs = {}
        self.bucket_default = UNLIMITED_BUCKET
        self.header_case = "canonical"
        self.rl_names = RL_HEADER_NAMES["canonical"]
        self.latency = 0.0
        self.down = False
        self.nonce_window = 300.0
        self.record_on = True
        self.record_limit = 200_000
        self.require_content_length = False

        self.guilds = {}            # guild id (str) -> Guild
        self.users = {}             # user id (int) -> User
        self.channels = {}          # channel id (str) -> DMChannel
        self.dm_by_user = {}        # user id (int) -> DMChannel
        self.messages = []          # message objects in creation order
        self.message_meta = []      # (recipient_id, nonce) per message
        self.nonces = {}            # (channel, author, nonce) -> (t, message)
        self.codes = {}             # code -> OAuthGrant
        self.access_tokens = {}     # token -> OAuthGrant
        self.refresh_tokens = {}    # token -> OAuthGrant
        self.next_user = None       # (user id, sticky) for /oauth2/authorize
        self.faults = []
        self.fault_seq = 0
        self.bucket_state = {}      # (bucket name, major param) -> BucketState
        self.global_times = collections.deque()
        self.records = []           # (seq, method, path, JSON text)
        self.arrivals = array.array("d")    # wall time of every bot request
        self.arrivals_max = 0               # exact max of folded arrivals
        self.stats = {
            "total": 0, "bot_requests": 0, "by_status": {},
            "rate_limited_global": 0, "rate_limited_bucket": 0,
            "invalid_requests": 0, "unauthorized_401": 0, "forbidden_403": 0,
            "rate_limited_429": 0, "ua_bad": 0, "dropped": 0, "hung": 0,
            "faults_injected": 0,
            # Streamed bodies (fault rules with body_bytes): started,
            # sent to the end, cut short by the client closing, and the body
            # bytes handed to the socket.
            "streams_started": 0, "streams_completed": 0,
            "streams_abandoned": 0, "stream_bytes_sent": 0,
        }

    @property
    def bot_user_id(self):
        return int(self.client_id) if is_snowflake(self.client_id) \
            else int(DEFAULT_CLIENT_ID)

    def bot_user(self):
        return User(self.bot_user_id, "lighthouse-mock-bot", "Lighthouse",
                    None, bot=True)

    def apply_config(self, cfg):
        """Apply /_mock/config fields; raises ValueError on bad input."""
        if not isinstance(cfg, dict):
            raise ValueError("config must be a JSON object")
        unknown = set(cfg) - set(self.CONFIG_KEYS)
        if unknown:
            raise ValueError("unknown config key(s): %s" % ", ".join(sorted(unknown)))
        for key in ("bot_token", "client_id", "client_secret"):
            if key in cfg:
                if not isinstance(cfg[key], str) or not cfg[key]:
                    raise ValueError("%s must be a non-empty string" % key)
                setattr(self, key, cfg[key])
        self.bot_auth = "Bot " + self.bot_token
        if "global_limit" in cfg:
            limit = cfg["global_limit"] or 0
            if not isinstance(limit, int) or limit < 0:
                raise ValueError("global_limit must be an integer >= 0")
            self.global_limit = limit
            self.global_times.clear()
        if "buckets" in cfg:
            self.set_buckets(cfg["buckets"])
        if "header_case" in cfg:
            if cfg["header_case"] not in RL_HEADER_NAMES:
                raise ValueError("header_case must be canonical, lower or odd")
            self.header_case = cfg["header_case"]
            self.rl_names = RL_HEADER_NAMES[self.header_case]
        if "latency_ms" in cfg:
            self.latency = max(0.0, float(cfg["latency_ms"] or 0)) / 1000.0
        if "down" in cfg:
            self.down = bool(cfg["down"])
        if "nonce_window" in cfg:
            self.nonce_window = float(cfg["nonce_window"])
        if "record" in cfg:
            self.record_on = bool(cfg["record"])
        if "record_limit" in cfg:
            self.record_limit = max(1, int(cfg["record_limit"]))
        if "require_content_length" in cfg:
            self.require_content_length = bool(cfg["require_content_length"])

    def set_buckets(self, buckets):
        """buckets: null/false/"off" or {name|"default": {limit, window}}."""
        specs, default = {}, UNLIMITED_BUCKET
        if buckets not in (None, False, "off"):
            if not isinstance(buckets, dict):
                raise ValueError("buckets must be an object or null")
            for name, spec in buckets.items():
                if not isinstance(spec, dict):
                    raise ValueError("bucket %r must be {limit, window}" % name)
                limit = int(spec.get("limit", 0))
                window = float(spec.get("window", 1.0))
                if limit < 1 or window <= 0:
                    raise ValueError("bucket %r needs limit >= 1 and window > 0" % name)
                if name == "default":
                    default = (limit, window)
                    continue
                name = BUCKET_ALIASES.get(name, name)
                if name not in BUCKET_NAMES:
                    raise ValueError("unknown bucket %r; known: default, %s"
                                     % (name, ", ".join(BUCKET_NAMES)))
                specs[name] = (limit, window)
        self.buckets_config = buckets if buckets not in (False, "off") else None
        self.bucket_specs = specs
        self.bucket_default = default
        self.bucket_state.clear()

    def config_json(self):
        return {
            "bot_token_set": bool(self.bot_token), "client_id": self.client_id,
            "client_secret_set": bool(self.client_secret),
            "global_limit": self.global_limit, "buckets": self.buckets_config,
            "header_case": self.header_case, "latency_ms": self.latency * 1000,
            "down": self.down, "nonce_window": self.nonce_window,
            "record": self.record_on, "record_limit": self.record_limit,
            "require_content_length": self.require_content_length,
        }

    # ---- lookups ------------------------------------------------------------

    def user_known(self, uid):
        if uid in self.users:
            return True
        return any(uid in g.members for g in self.guilds.values())

    def user_json(self, uid):
        user = self.users.get(uid)
        if user is None:
            user = User(uid)        # a generated member without a profile
        return user.to_json()

    def member_json(self, guild, uid):
        info = guild.info.get(uid)
        return {
            "user": self.user_json(uid),
            "nick": info.nick if info else None,
            "avatar": None, "banner": None,
            "roles": list(guild.members[uid]),
            "joined_at": info.joined_at if info else guild.default_joined_at,
            "premium_since": None,
            "deaf": info.deaf if info else False,
            "mute": info.mute if info else False,
            "flags": 0, "pending": False,
            "communication_disabled_until": None,
        }

    def guild_or_404(self, gid):
        snowflake_param("guild_id", gid)
        guild = self.guilds.get(gid)
        if guild is None:
            fail(404, 10004, "Unknown Guild")
        return guild

    def json_body(self, req):
        """The request body as JSON (cached on req for the record)."""
        if req.parsed is None:
            if not req.body:
                req.parsed = {}
            else:
                try:
                    req.parsed = json.loads(req.body)
                except (ValueError, UnicodeDecodeError):
                    fail(400, 50109, "The request body contains invalid JSON.")
        return req.parsed

    def resolve(self, method, path):
        """Match a path against the route table.
        Returns (route, params, None) or (None, None, 404|405)."""
        segs = path.split("/")
        group = self.routes.get(len(segs))
        if group:
            for methods in group.values():
                any_route = next(iter(methods.values()))
                params = {}
                for seg, (literal, name) in zip(segs, any_route.parts):
                    if literal is not None:
                        if seg != literal:
                            break
                    elif not seg:
                        break
                    else:
                        params[name] = seg
                else:
                    route = methods.get(method)
                    if route is None:
                        return None, None, 405
                    return route, params, None
        return None, None, 404

    # ---- the request pipeline ----------------------------------------------

    def handle(self, req):
        """Decide the response for one request.
        Returns (reply, action, delay seconds). Order of checks for API and
        OAuth routes: down switch (bot routes), fault rules, routing
        (404/405), bot auth (401), global limit, route bucket, handler."""
        path = req.path
        if path.startswith("/_mock/"):
            return self.control(req), SEND, 0.0

        now = time.time()
        mono = time.monotonic()
        self.seq += 1
        stats = self.stats
        stats["total"] += 1

        route, params, route_err = self.resolve(req.method, path)
        auth = req.headers.get("authorization")
        if route is not None:
            is_bot = route.auth == "bot" or (
                route.auth == "bot_or_bearer"
                and not (auth or "").startswith("Bearer "))
        else:
            is_bot = path.startswith(API_PREFIX + "/")
        if is_bot:
            stats["bot_requests"] += 1
            self.arrivals.append(now)
            if len(self.arrivals) >= ARRIVALS_FOLD:
                self.fold_arrivals()

        rule = None
        action = SEND
        delay = self.latency
        if is_bot and self.down:
            reply = discord_error(502, 0, "502: Bad Gateway")
        else:
            if self.faults:
                rule = self.match_fault(req.method, path, req.query_string)
            reply = None
            if rule is None or rule.process:
                reply = self.process(req, route, params, route_err, is_bot,
                                     auth, now, mono)
            if rule is not None:
                stats["faults_injected"] += 1
                delay += rule.latency
                if rule.hang:
                    action = HANG
                elif rule.drop:
                    action = RESET if rule.drop == "reset" else DROP
                elif rule.status is not None:
                    reply = rule.reply(self.rl_names)

        # Counters.
        if action == SEND:
            status = reply.status
            by_status = stats["by_status"]
            by_status[status] = by_status.get(status, 0) + 1
            counter = INVALID_STATUS_COUNTERS.get(status)
            # Discord does not count a 429 of a shared resource bucket
            # towards the invalid-request limit.
            if status == 429 and any(k.lower() == "x-ratelimit-scope" and str(v).lower() == "shared"
                                     for k, v in reply.headers):
                counter = None
            if counter is not None:
                stats["invalid_requests"] += 1
                stats[counter] += 1
        elif action == HANG:
            stats["hung"] += 1
        else:
            stats["dropped"] += 1
        ua_ok = UA_RE.match(req.headers.get("user-agent", "")) is not None
        if not ua_ok:
            stats["ua_bad"] += 1

        if self.record_on:
            self.record(req, route, reply, action, rule, ua_ok, now)
        return reply, action, delay

    def process(self, req, route, params, route_err, is_bot, auth, now, mono):
        """Normal processing: routing errors, auth, rate limits, handler."""
        if route_err == 404:
            return not_found()
        if route_err == 405:
            return discord_error(405, 0, "405: Method Not Allowed")
        if route.auth == "bot":
            ok = auth is not None and hmac.compare_digest(
                auth.encode(), self.bot_auth.encode())
            req.auth_ok = ok
            if not ok:
                return unauthorized()
        if self.require_content_length and req.method in ("PUT", "POST", "PATCH") \
                and "content-length" not in req.headers \
                and "transfer-encoding" not in req.headers:
            # What Discord's front end does for a body-less PUT/POST.
            return Reply(411, b"<h1>411 Length Required</h1>", "text/html")
        if is_bot and self.global_limit:
            limited = self.check_global(mono)
            if limited is not None:
                return limited
        rl_headers = None
        if route.bucket is not None:
            rl_headers, limited = self.check_bucket(route, params, now, mono)
            if limited is not None:
                return limited
        try:
            reply = route.handler(req, params)
        except ApiError as err:
            reply = err.reply
        if rl_headers:
            reply.headers.extend(rl_headers)
        return reply

    def match_fault(self, method, path, query_string=""):
        for rule in self.faults:
            if rule.matches(method, path, query_string):
                if rule.count > 0:
                    rule.count -= 1
                    if rule.count == 0:
                        self.faults.remove(rule)
                return rule
        return None

    def check_global(self, mono):
        """Sliding one-second window over admitted bot requests."""
        times = self.global_times
        cutoff = mono - 1.0
        while times and times[0] <= cutoff:
            times.popleft()
        if len(times) >= self.global_limit:
            retry = max(0.001, times[0] + 1.0 - mono)
            self.stats["rate_limited_global"] += 1
            names = self.rl_names
            return json_reply(429, {"message": "You are being rate limited.",
                                    "retry_after": round(retry, 3),
                                    "global": True, "code": 0},
                              [(names["retry_after"], str(math.ceil(retry))),
                               (names["global"], "true"),
                               (names["scope"], "global")], 0)
        times.append(mono)
        return None

    def check_bucket(self, route, params, now, mono):
        """Per-route fixed-window bucket keyed by (route, major parameter).
        Returns (headers for the reply, 429 reply or None)."""
        limit, window = self.bucket_specs.get(route.bucket, self.bucket_default)
        major = params.get("guild_id") or params.get("channel_id") or ""
        key = (route.bucket, major)
        state = self.bucket_state.get(key)
        if state is None or mono >= state.reset_at:
            state = BucketState(mono + window)
            self.bucket_state[key] = state
        reset_after = state.reset_at - mono
        names = self.rl_names
        limited = state.used >= limit
        if not limited:
            state.used += 1
        headers = [
            (names["limit"], str(limit)),
            (names["remaining"], str(limit - state.used)),
            (names["reset"], "%.3f" % (now + reset_after)),
            (names["reset_after"], "%.3f" % reset_after),
            (names["bucket"], route.bucket_hash),
        ]
        if not limited:
            return headers, None
        self.stats["rate_limited_bucket"] += 1
        retry = max(0.001, reset_after)
        headers += [(names["retry_after"], str(math.ceil(retry))),
                    (names["scope"], "user")]
        return None, json_reply(429, {"message": "You are being rate limited.",
                                      "retry_after": round(retry, 3),
                                      "global": False, "code": 0}, headers, 0)

    # ---- recording -----------------------------------------------------------

    def record(self, req, route, reply, action, rule, ua_ok, now):
        headers = dict(req.headers)
        auth = headers.get("authorization")
        if auth is not None:
            if auth.startswith("Bot "):
                headers["authorization"] = "Bot <redacted:ok>" if \
                    hmac.compare_digest(auth.encode(), self.bot_auth.encode()) \
                    else "Bot <redacted:bad>"
            elif auth.startswith("Bearer "):
                headers["authorization"] = "Bearer <redacted>"
            else:
                # Keep a well-known scheme name only: a bare token has no
                # scheme, and its first word would be the secret itself.
                scheme = auth.split(" ", 1)[0]
                headers["authorization"] = (
                    scheme + " <redacted>"
                    if " " in auth and scheme.lower() in ("basic", "bot", "bearer")
                    else "<redacted>")
        body = req.parsed
        if body is None and req.body:
            body = self.parse_body_for_record(req)
        rec = {
            "seq": self.seq, "t": now, "method": req.method, "path": req.path,
            "query": redact(req.query()) if req.query_string else {},
            "headers": headers,
            "body": redact(body) if body is not None else None,
            "status": reply.status if action == SEND else None,
            "code": reply.code if action == SEND else None,
            "ua_ok": ua_ok, "auth_ok": req.auth_ok,
            "route": route.name if route is not None else None,
        }
        if isinstance(body, dict) and "nonce" in body:
            rec["nonce"] = body["nonce"]
        if rule is not None:
            rec["fault"] = {"id": rule.id, "action": action,
                            "processed_status": reply.status if rule.process
                            and reply is not None else None}
        # Stored as (seq, method, path, JSON text): tuples of strings are not
        # tracked by the cyclic GC, so a few hundred thousand records cost no
        # collector pauses; the text doubles as the --log line.
        text = dumps(rec)
        records = self.records
        records.append((rec["seq"], req.method, req.path, text))
        # Trim in chunks (not one record per request: that would move the
        # whole list every time) once the limit is exceeded by 10%.
        if len(records) > self.record_limit + self.record_limit // 10:
            del records[:len(records) - self.record_limit]
        if self.log_fp is not None:
            self.log_fp.write(text + "\n")

    @staticmethod
    def parse_body_for_record(req):
        ctype = req.headers.get("content-type", "")
        try:
            text = req.body.decode("utf-8")
            if "x-www-form-urlencoded" in ctype:
                return first_values(text)
            return json.loads(text)
        except ValueError:
            return "<%d bytes, not parsed>" % len(req.body)

    @staticmethod
    def window_max(times):
        """Most timestamps within any sliding 1 s window (two pointers over
        the sorted times; ~0.15 s per million)."""
        times = sorted(times)
        best = 0
        lo = 0
        for hi, t in enumerate(times):
            while t - times[lo] >= 1.0:
                lo += 1
            if hi - lo + 1 > best:
                best = hi - lo + 1
        return best

    def max_per_second(self):
        """Most bot requests that arrived within any 1 s sliding window,
        computed exactly from the recorded arrival times."""
        return max(self.arrivals_max, self.window_max(self.arrivals))

    def fold_arrivals(self):
        """Bound memory on very long runs, keeping the result exact: remember
        the maximum over the timestamps so far, then keep only the last
        second of them (the only ones a later window can still include)."""
        self.arrivals_max = self.max_per_second()
        keep_from = bisect.bisect_right(self.arrivals, self.arrivals[-1] - 1.0)
        self.arrivals = self.arrivals[keep_from:]

    # ---- Discord route handlers ----------------------------------------------
    # Each takes (req, params) and returns a Reply or raises ApiError.

    def _role_target(self, params):
        """Common checks of the role routes; returns (guild, uid, role)."""
        guild = self.guild_or_404(params["guild_id"])
        uid = int(snowflake_param("user_id", params["user_id"]))
        role = snowflake_param("role_id", params["role_id"])
        if uid not in guild.members:
            fail(404, 10007, "Unknown Member")
        guild.assignable_role(role)
        return guild, uid, role

    def h_add_role(self, req, params):
        """PUT /guilds/{guild_id}/members/{user_id}/roles/{role_id}"""
        guild, uid, role = self._role_target(params)
        roles = guild.members[uid]
        if role not in roles:
            before = self.member_before(guild, uid)
            guild.members[uid] = roles + (role,)
            self.member_changed(guild, uid, before)
        return Reply(204)

    def h_remove_role(self, req, params):
        """DELETE /guilds/{guild_id}/members/{user_id}/roles/{role_id}"""
        guild, uid, role = self._role_target(params)
        roles = guild.members[uid]
        if role in roles:
            before = self.member_before(guild, uid)
            guild.members[uid] = tuple(r for r in roles if r != role)
            self.member_changed(guild, uid, before)
        return Reply(204)

    def h_get_member(self, req, params):
        """GET /guilds/{guild_id}/members/{user_id}"""
        guild = self.guild_or_404(params["guild_id"])
        uid = int(snowflake_param("user_id", params["user_id"]))
        if uid not in guild.members:
            fail(404, 10007, "Unknown Member")
        return json_reply(200, self.member_json(guild, uid))

    def h_list_members(self, req, params):
        """GET /guilds/{guild_id}/members?limit=1..1000&after=snowflake"""
        guild = self.guild_or_404(params["guild_id"])
        query = req.query()
        limit = query.get("limit", "1")
        after = query.get("after", "0")
        errors = {}
        if not (isinstance(limit, str) and limit.isascii() and limit.isdigit()):
            errors.update(field_error("limit", "NUMBER_TYPE_COERCE",
                                      'Value "%s" is not int.' % limit))
        elif not 1 <= int(limit) <= 1000:
            errors.update(field_error(
                "limit", "NUMBER_TYPE_MAX" if int(limit) > 1000 else "NUMBER_TYPE_MIN",
                "int value should be less than or equal to 1000." if int(limit) > 1000
                else "int value should be greater than or equal to 1."))
        if not is_snowflake(after):
            errors.update(field_error("after", "NUMBER_TYPE_COERCE",
                                      'Value "%s" is not snowflake.' % after))
        if errors:
            fail_form(errors)
        start = bisect.bisect_right(guild.ids, int(after))
        page = guild.ids[start:start + int(limit)]
        member_json = self.member_json
        return json_reply(200, [member_json(guild, uid) for uid in page])

    def h_add_member(self, req, params):
        """PUT /guilds/{guild_id}/members/{user_id} (OAuth2 guilds.join)"""
        guild = self.guild_or_404(params["guild_id"])
        uid = int(snowflake_param("user_id", params["user_id"]))
        body = self.json_body(req)
        if not isinstance(body, dict):
            fail(400, 50109, "The request body contains invalid JSON.")
        token = body.get("access_token")
        if not isinstance(token, str) or not token:
            fail_form(field_error("access_token", "BASE_TYPE_REQUIRED",
                                  "This field is required"))
        roles = body.get("roles") or []
        if not isinstance(roles, list) or not all(is_snowflake(r) for r in roles):
            fail_form(field_error("roles", "BASE_TYPE_BAD_TYPE",
                                  "Must be an array of snowflakes."))
        if uid in guild.members:
            return Reply(204)
        grant = self.access_tokens.get(token)
        if grant is None or not grant.valid(time.time()) \
                or grant.user_id != uid or "guilds.join" not in grant.scopes:
            fail(403, 50025, "Invalid OAuth2 access token")
        for role in roles:
            guild.assignable_role(role)
        if uid not in self.users:
            self.users[uid] = User(uid)
        info = MemberInfo(nick=body.get("nick"), joined_at=iso_time(time.time()),
                          deaf=bool(body.get("deaf")), mute=bool(body.get("mute")))
        guild.add_member(uid, dict.fromkeys(roles), info)
        self.member_changed(guild, uid, None)
        return json_reply(201, self.member_json(guild, uid))

    def h_gateway_bot(self, req, params):
        """GET /gateway/bot (with the Gateway on)"""
        return json_reply(200, self.gateway.bot_info())

    def h_gateway(self, req, params):
        """GET /gateway (with the Gateway on; no auth)"""
        return json_reply(200, {"url": self.gateway.url})

    def h_create_dm(self, req, params):
        """POST /users/@me/channels {"recipient_id": snowflake}"""
        body = self.json_body(req)
        if not isinstance(body, dict):
            fail(400, 50109, "The request body contains invalid JSON.")
        rid = body.get("recipient_id")
        if isinstance(rid, int) and not isinstance(rid, bool):
            rid = str(rid)
        if not is_snowflake(rid):
            fail_form(field_error("recipient_id", "NUMBER_TYPE_COERCE",
                                  'Value "%s" is not snowflake.' % (rid,)))
        uid = int(rid)
        if uid == self.bot_user_id or not self.user_known(uid):
            fail(400, 50033, "Invalid Recipient(s)")
        channel = self.dm_by_user.get(uid)
        if channel is None:
            channel = DMChannel(self.snowflakes.next(), uid)
            self.dm_by_user[uid] = channel
            self.channels[channel.id] = channel
        return json_reply(200, {
            "id": channel.id, "type": 1,
            "last_message_id": channel.last_message_id, "flags": 0,
            "recipients": [self.user_json(uid)],
        })

    def h_create_message(self, req, params):
        """POST /channels/{channel_id}/messages with nonce/enforce_nonce"""
        cid = snowflake_param("channel_id", params["channel_id"])
        channel = self.channels.get(cid)
        if channel is None:
            fail(404, 10003, "Unknown Channel")
        body = self.json_body(req)
        if not isinstance(body, dict):
            fail(400, 50109, "The request body contains invalid JSON.")
        content = body.get("content")
        nonce = body.get("nonce")
        errors = {}
        if content is not None and not isinstance(content, str):
            errors.update(field_error("content", "BASE_TYPE_BAD_TYPE",
                                      "Must be a string."))
        elif content is not None and len(content) > 2000:
            errors.update(field_error("content", "BASE_TYPE_MAX_LENGTH",
                                      "Must be 2000 or fewer in length."))
        if nonce is not None:
            if isinstance(nonce, bool) or not isinstance(nonce, (int, str)):
                errors.update(field_error("nonce", "BASE_TYPE_BAD_TYPE",
                                          "Must be an integer or a string."))
            elif isinstance(nonce, str) and len(nonce) > 25:
                errors.update(field_error("nonce", "BASE_TYPE_MAX_LENGTH",
                                          "Must be 25 or fewer in length."))
            elif isinstance(nonce, int) and not -2**63 <= nonce < 2**63:
                errors.update(field_error("nonce", "NUMBER_TYPE_MAX",
                                          "Must be a 64-bit integer."))
        if errors:
            fail_form(errors)
        if not content and not body.get("embeds") and not body.get("sticker_ids") \
                and not body.get("components") and not body.get("poll"):
            fail(400, 50006, "Cannot send an empty message")

        author = self.bot_user_id
        now = time.monotonic()
        # Discord: "If another message was created by the same author with
        # the same nonce, that message will be returned" -- the author's
        # nonces, whatever the channel.
        key = (author, str(nonce)) if nonce is not None else None
        if key is not None and body.get("enforce_nonce") is True:
            seen = self.nonces.get(key)
            if seen is not None and now - seen[0] < self.nonce_window:
                return json_reply(200, seen[1])     # the original message
        recipient = self.users.get(channel.recipient_id)
        if recipient is not None and (recipient.dms_closed or recipient.bot):
            fail(403, 50007, "Cannot send messages to this user")

        message = {
            "id": self.snowflakes.next(), "type": 0, "channel_id": cid,
            "content": content or "", "author": self.bot_user().to_json(),
            "timestamp": iso_time(time.time()), "edited_timestamp": None,
            "tts": bool(body.get("tts", False)), "mention_everyone": False,
            "mentions": [], "mention_roles": [], "attachments": [],
            "embeds": body.get("embeds") or [], "components": [],
            "pinned": False, "flags": 0,
        }
        if nonce is not None:
            message["nonce"] = nonce
            seen = self.nonces.get(key)
            if seen is None or now - seen[0] >= self.nonce_window:
                self.nonces[key] = (now, message)
        channel.last_message_id = message["id"]
        self.messages.append(message)
        self.message_meta.append(channel.recipient_id)
        return json_reply(200, message)

    def h_users_me(self, req, params):
        """GET /users/@me with a Bot token or an OAuth2 Bearer token."""
        auth = req.headers.get("authorization") or ""
        if auth.startswith("Bearer "):
            grant = self.access_tokens.get(auth[7:].strip())
            ok = grant is not None and grant.valid(time.time()) \
                and "identify" in grant.scopes
            req.auth_ok = ok
            if not ok:
                return unauthorized()
            return json_reply(200, self.user_json(grant.user_id))
        ok = hmac.compare_digest(auth.encode(), self.bot_auth.encode())
        req.auth_ok = ok
        if not ok:
            return unauthorized()
        return json_reply(200, self.bot_user().to_json())

    # ---- OAuth2 ----------------------------------------------------------------

    def issue_tokens(self, user_id, scope, expires_in=ACCESS_TOKEN_TTL):
        access, refresh = rand_token(30), rand_token(30)
        self.access_tokens[access] = OAuthGrant(
            user_id, scope, expires_at=time.time() + expires_in)
        self.refresh_tokens[refresh] = OAuthGrant(user_id, scope)
        return {"access_token": access, "token_type": "Bearer",
                "expires_in": expires_in, "refresh_token": refresh,
                "scope": scope}

    def issue_code(self, user_id, redirect_uri, scope, ttl=OAUTH_CODE_TTL):
        code = rand_token(30)
        self.codes[code] = OAuthGrant(user_id, scope, redirect_uri,
                                      time.time() + ttl)
        return code

    def ensure_user(self, uid):
        if uid not in self.users:
            self.users[uid] = User(uid)

    @staticmethod
    def oauth_error(status, error, description=None, headers=None):
        body = {"error": error}
        if description:
            body["error_description"] = description
        return json_reply(status, body, headers)

    def h_oauth_token(self, req, params):
        """POST /oauth2/token (application/x-www-form-urlencoded)"""
        try:
            form = first_values(req.body.decode("utf-8"))
        except UnicodeDecodeError:
            form = {}
        req.parsed = form
        # Client authentication: HTTP Basic or client_id + client_secret.
        auth = req.headers.get("authorization") or ""
        client_id = client_secret = None
        if auth[:6].lower() == "basic ":
            try:
                decoded = base64.b64decode(auth[6:].strip(), validate=True).decode()
                cid, _, secret = decoded.partition(":")
                client_id = urllib.parse.unquote_plus(cid)
                client_secret = urllib.parse.unquote_plus(secret)
            except (ValueError, UnicodeDecodeError):
                pass
        else:
            client_id = form.get("client_id")
            client_secret = form.get("client_secret")
        req.auth_ok = isinstance(client_id, str) and isinstance(client_secret, str) \
            and client_id == self.client_id \
            and hmac.compare_digest(client_secret.encode(),
                                    self.client_secret.encode())
        if not req.auth_ok:
            return self.oauth_error(401, "invalid_client")

        grant_type = form.get("grant_type")
        now = time.time()
        if grant_type == "authorization_code":
            code = form.get("code")
            grant = self.codes.get(code) if isinstance(code, str) else None
            if grant is None or not grant.valid(now):
                return self.oauth_error(400, "invalid_grant",
                                        'Invalid "code" in request.')
            if form.get("redirect_uri") != grant.redirect_uri:
                return self.oauth_error(400, "invalid_grant",
                                        'Invalid "redirect_uri" in request.')
            del self.codes[code]            # single use
            return json_reply(200, self.issue_tokens(grant.user_id, grant.scope),
                              [("Cache-Control", "no-store")])
        if grant_type == "refresh_token":
            token = form.get("refresh_token")
            grant = self.refresh_tokens.pop(token, None) \
                if isinstance(token, str) else None
            if grant is None:
                return self.oauth_error(400, "invalid_grant")
            return json_reply(200, self.issue_tokens(grant.user_id, grant.scope),
                              [("Cache-Control", "no-store")])
        return self.oauth_error(400, "unsupported_grant_type")

    def h_oauth_authorize(self, req, params):
        """GET /oauth2/authorize: the user (set with /_mock/oauth/next_user)
        approves at once and is redirected back with a code."""
        query = req.query()
        redirect_uri = query.get("redirect_uri")
        if query.get("client_id") != self.client_id:
            return self.oauth_error(400, "invalid_client", "Unknown client_id.")
        if not isinstance(redirect_uri, str) or not redirect_uri:
            return self.oauth_error(400, "invalid_request", "Missing redirect_uri.")
        state = query.get("state")
        scope = query.get("scope") or ""
        if query.get("response_type") != "code":
            result = {"error": "unsupported_response_type"}
        elif "identify" not in scope.split():
            result = {"error": "invalid_scope"}
        elif self.next_user is None:
            result = {"error": "access_denied"}
        else:
            uid, sticky = self.next_user
            if not sticky:
                self.next_user = None
            self.ensure_user(uid)
            result = {"code": self.issue_code(uid, redirect_uri, scope)}
        if isinstance(state, str):
            result["state"] = state
        sep = "&" if "?" in redirect_uri else "?"
        location = redirect_uri + sep + urllib.parse.urlencode(result)
        return Reply(302, EMPTY, None, [("Location", location)])

    # ---- control API -------------------------------------------------------

    def control(self, req):
        """Dispatch /_mock/... requests; never recorded or faulted."""
        parts = req.path.rstrip("/").split("/")[2:]     # after "/_mock"
        name = parts[0] if parts else ""
        handler = getattr(self, "c_" + name, None)
        if handler is None:
            return json_reply(404, {"error": "unknown control route %s" % req.path})
        body = None
        if req.body:
            try:
                body = json.loads(req.body)
            except ValueError:
                return json_reply(400, {"error": "body is not valid JSON"})
        try:
            return handler(req.method, parts[1:], body, req)
        except ControlError as err:
            return json_reply(err.status, {"error": err.message})
        except (ValueError, TypeError, KeyError, re.error) as err:
            return json_reply(400, {"error": "%s: %s" % (type(err).__name__, err)})

    @staticmethod
    def _method(method, *allowed):
        if method not in allowed:
            raise ControlError(405, "method not allowed")

    @staticmethod
    def _uid(value, field="id"):
        if isinstance(value, int) and not isinstance(value, bool):
            value = str(value)
        if not is_snowflake(value):
            raise ControlError(400, "%s must be a snowflake string" % field)
        return int(value)

    @staticmethod
    def _roles(value):
        roles = value or []
        if not isinstance(roles, list):
            raise ControlError(400, "roles must be a list")
        roles = [str(r) for r in roles]
        if not all(is_snowflake(r) for r in roles):
            raise ControlError(400, "roles must be snowflakes")
        return roles

    def c_health(self, method, rest, body, req):
        return json_reply(200, {"ok": True})

    def c_reset(self, method, rest, body, req):
        """POST /_mock/reset [config fields]"""
        self._method(method, "POST")
        if self.gateway is not None:
            self.gateway.on_reset()
        self.reset(*self.cli_credentials)
        if body:
            self.apply_config(body)
        return json_reply(200, {"ok": True, "config": self.config_json()})

    def c_config(self, method, rest, body, req):
        """GET|POST /_mock/config"""
        self._method(method, "GET", "POST")
        if method == "POST":
            self.apply_config(body or {})
        return json_reply(200, self.config_json())

    def c_guilds(self, method, rest, body, req):
        """POST /_mock/guilds creates or replaces a guild:
        {"id", "name", "roles": [...], "auto_roles": bool,
         "privileged_roles": [...], "members": [{"id", "roles", "username",
         "global_name", "avatar", "nick", "dms_closed"}...],
         "generate": {"count", "start_id", "step", "roles"}}
        GET /_mock/guilds/{id} returns a summary."""
        if method == "GET" and len(rest) == 1:
            guild = self.guilds.get(rest[0])
            if guild is None:
                raise ControlError(404, "unknown guild")
            return json_reply(200, {
                "id": guild.id, "name": guild.name,
                "roles": sorted(guild.roles),
                "privileged_roles": sorted(guild.privileged_roles),
                "auto_roles": guild.auto_roles,
                "member_count": len(guild.members)})
        self._method(method, "POST")
        if not isinstance(body, dict):
            raise ControlError(400, "body must be a JSON object")
        gid = str(self._uid(body.get("id"), "id"))
        guild = Guild(gid, body.get("name"), self._roles(body.get("roles")),
                      self._roles(body.get("privileged_roles")),
                      bool(body.get("auto_roles", False)))
        gen = body.get("generate")
        if gen:
            count = int(gen.get("count", 0))
            start = int(gen.get("start_id", 100000000000000000))
            step = int(gen.get("step", 1))
            if count < 0 or step < 1:
                raise ControlError(400, "generate needs count >= 0 and step >= 1")
            roles = tuple(self._roles(gen.get("roles")))
            guild.roles.update(roles)
            ids = range(start, start + count * step, step)
            guild.members = dict.fromkeys(ids, roles)
            guild.ids = list(ids)
        for m in body.get("members") or []:
            uid = self._member_user(m)
            roles = self._roles(m.get("roles"))
            guild.roles.update(roles)
            guild.members[uid] = tuple(roles)
            guild.info[uid] = MemberInfo(m.get("nick"), m.get("joined_at")
                                         or guild.default_joined_at)
        if body.get("members"):
            guild.ids = sorted(guild.members)
        replaced = gid in self.guilds
        self.guilds[gid] = guild
        if self.gateway is not None:
            self.gateway.guild_created(guild, replaced)
        return json_reply(200, {"id": gid, "member_count": len(guild.members)})

    def _member_user(self, m):
        """Create/update the User behind a member description."""
        if not isinstance(m, dict):
            raise ControlError(400, "member must be an object")
        uid = self._uid(m.get("id"))
        user = self.users.get(uid)
        if user is None:
            user = self.users[uid] = User(uid)
        for field in ("username", "global_name", "avatar"):
            if field in m:
                setattr(user, field, m[field])
        if "dms_closed" in m:
            user.dms_closed = bool(m["dms_closed"])
        if "bot" in m:
            user.bot = bool(m["bot"])
        return uid

    def c_users(self, method, rest, body, req):
        """POST /_mock/users {"id", "username", "global_name", "avatar",
        "dms_closed", "bot"} (partial updates keep other fields)."""
        if method == "GET" and len(rest) == 1:
            uid = self._uid(rest[0])
            if uid not in self.users:
                raise ControlError(404, "unknown user")
            user = self.users[uid]
            return json_reply(200, dict(user.to_json(), dms_closed=user.dms_closed))
        self._method(method, "POST")
        uid = self._member_user(body)
        user = self.users[uid]
        return json_reply(200, dict(user.to_json(), dms_closed=user.dms_closed))

    def c_members(self, method, rest, body, req):
        """POST /_mock/members {"guild_id", "id", "roles", "nick", ...};
        GET|DELETE /_mock/members/{guild_id}/{user_id};
        PUT|DELETE /_mock/members/{guild_id}/{user_id}/roles/{role_id}."""
        if method == "POST":
            if not isinstance(body, dict):
                raise ControlError(400, "body must be a JSON object")
            guild = self.guilds.get(str(body.get("guild_id")))
            if guild is None:
                raise ControlError(404, "unknown guild")
            before = self.member_before(guild, self._uid(body.get("id")))
            uid = self._member_user(body)
            roles = self._roles(body.get("roles"))
            guild.roles.update(roles)
            # With the Gateway on, a member who is changed (not re-joined)
            # keeps joined_at, so that an unchanged member sends no event.
            old = guild.info.get(uid)
            guild.add_member(uid, roles, MemberInfo(
                body.get("nick"), body.get("joined_at")
                or (old.joined_at if old and before else iso_time(time.time()))))
            self.member_changed(guild, uid, before)
            return json_reply(200, {"roles": roles})
        if len(rest) == 4 and rest[2] == "roles":
            self._method(method, "PUT", "DELETE")
            role = self._roles([rest[3]])[0]
        elif len(rest) == 2:
            self._method(method, "GET", "DELETE")
        else:
            raise ControlError(404, "use /_mock/members/{guild_id}/{user_id}")
        guild = self.guilds.get(rest[0])
        uid = self._uid(rest[1])
        if guild is None or uid not in guild.members:
            raise ControlError(404, "unknown member")
        before = self.member_before(guild, uid)
        if len(rest) == 4:
            roles = guild.members[uid]
            if method == "PUT":
                guild.roles.add(role)
                roles = roles if role in roles else roles + (role,)
            else:
                roles = tuple(r for r in roles if r != role)
            guild.members[uid] = roles
            self.member_changed(guild, uid, before)
            return json_reply(200, {"roles": list(roles)})
        if method == "DELETE":
            guild.remove_member(uid)
            self.member_changed(guild, uid, before)
            return json_reply(200, {"deleted": True})
        return json_reply(200, {"roles": list(guild.members[uid])})

    def c_gateway(self, method, rest, body, req):
        """/_mock/gateway/... (see gateway.py); 404 without the Gateway."""
        if self.gateway is None:
            raise ControlError(404, "the Gateway is off (start with --gateway-port)")
        status, obj = self.gateway.control(method, rest, body if body is not None else {})
        return json_reply(status, obj)

    def c_faults(self, method, rest, body, req):
        """POST a rule or a list of rules; GET lists; DELETE clears."""
        self._method(method, "GET", "POST", "DELETE")
        if method == "DELETE":
            self.faults.clear()
        elif method == "POST":
            specs = body if isinstance(body, list) else [body]
            rules = []
            for spec in specs:
                if not isinstance(spec, dict):
                    raise ControlError(400, "a fault rule must be an object")
                self.fault_seq += 1
                try:
                    rules.append(FaultRule(self.fault_seq, spec))
                except ValueError as err:
                    raise ControlError(400, str(err))
            self.faults.extend(rules)
            return json_reply(200, {"ids": [r.id for r in rules],
                                    "faults": [r.to_json() for r in self.faults]})
        return json_reply(200, {"faults": [r.to_json() for r in self.faults]})

    def c_oauth(self, method, rest, body, req):
        """POST /_mock/oauth/{next_user,codes,tokens,expire}"""
        self._method(method, "POST")
        what = rest[0] if rest else ""
        body = body or {}
        if what == "next_user":
            if body.get("user_id") is None:
                self.next_user = None
            else:
                uid = self._uid(body.get("user_id"), "user_id")
                self.ensure_user(uid)
                self.next_user = (uid, bool(body.get("sticky", False)))
            return json_reply(200, {"ok": True})
        if what == "codes":
            uid = self._uid(body.get("user_id"), "user_id")
            redirect_uri = body.get("redirect_uri")
            if not isinstance(redirect_uri, str):
                raise ControlError(400, "redirect_uri is required")
            self.ensure_user(uid)
            code = self.issue_code(uid, redirect_uri,
                                   body.get("scope") or DEFAULT_SCOPE,
                                   float(body.get("expires_in", OAUTH_CODE_TTL)))
            return json_reply(200, {"code": code})
        if what == "tokens":
            uid = self._uid(body.get("user_id"), "user_id")
            self.ensure_user(uid)
            return json_reply(200, self.issue_tokens(
                uid, body.get("scope") or DEFAULT_SCOPE,
                int(body.get("expires_in", ACCESS_TOKEN_TTL))))
        if what == "expire":
            expired = 0
            if body.get("all"):
                expired += len(self.refresh_tokens)
                self.refresh_tokens.clear()
            if body.get("all_access"):
                expired += len(self.access_tokens)
                self.access_tokens.clear()
            if self.refresh_tokens.pop(body.get("refresh_token"), None):
                expired += 1
            if self.access_tokens.pop(body.get("access_token"), None):
                expired += 1
            return json_reply(200, {"expired": expired})
        raise ControlError(404, "unknown oauth control route")

    def c_requests(self, method, rest, body, req):
        """GET /_mock/requests?since=SEQ&path_prefix=&method=&limit="""
        self._method(method, "GET")
        query = req.query()
        since = int(query.get("since", 0))
        prefix = query.get("path_prefix")
        want_method = query.get("method")
        limit = int(query.get("limit", 0))
        records = self.records
        start = bisect.bisect_right(records, since, key=lambda r: r[0])
        out = []
        for seq, rec_method, path, text in records[start:]:
            if prefix and not path.startswith(prefix):
                continue
            if want_method and rec_method != want_method.upper():
                continue
            out.append(text)
            if limit and len(out) >= limit:
                break
        # The records are already JSON; splice them in without re-encoding.
        body = '{"requests":[%s],"last_seq":%d}' % (",".join(out), self.seq)
        return Reply(200, body.encode(), JSON_CT)

    def c_messages(self, method, rest, body, req):
        """GET /_mock/messages: created messages in creation order."""
        self._method(method, "GET")
        return json_reply(200, [
            {"id": m["id"], "channel_id": m["channel_id"],
             "recipient_id": str(rid), "content": m["content"],
             "nonce": m.get("nonce"), "timestamp": m["timestamp"]}
            for m, rid in zip(self.messages, self.message_meta)])

    def c_stats(self, method, rest, body, req):
        """GET /_mock/stats"""
        self._method(method, "GET")
        stats = dict(self.stats)
        stats["by_status"] = {str(k): v for k, v in sorted(stats["by_status"].items())}
        stats["max_per_second"] = self.max_per_second()
        stats["connections_total"] = self.connections_total
        stats["connections_open"] = len(self.connections)
        stats["records"] = len(self.records)
        stats["messages"] = len(self.messages)
        return json_reply(200, stats)


class ControlError(Exception):
    def __init__(self, status, message):
        super().__init__(message)
        self.status = status
        self.message = message


# --------------------------------------------------------------------------
# HTTP/1.1 server protocol
# --------------------------------------------------------------------------

class HttpError(Exception):
    def __init__(self, status):
        super().__init__(status)
        self.status = status


_HEX_RE = re.compile(rb"[0-9A-Fa-f]{1,16}")


def parse_chunked(buf, limit):
    """Decode a chunked body at the start of buf.
    Returns (body, bytes consumed), or None while incomplete."""
    pos, size_total, out, n = 0, 0, [], len(buf)
    while True:
        eol = buf.find(b"\r\n", pos)
        if eol < 0:
            if n - pos > 1024:
                raise HttpError(400)
            return None
        size_text = bytes(buf[pos:eol]).split(b";", 1)[0].strip()
        if not _HEX_RE.fullmatch(size_text):
            raise HttpError(400)
        size = int(size_text, 16)
        pos = eol + 2
        if size == 0:
            # Optional trailer fields, then the final empty line.
            if buf[pos:pos + 2] == b"\r\n":
                return b"".join(out), pos + 2
            end = buf.find(b"\r\n\r\n", pos)
            if end < 0:
                if n - pos > MAX_HEAD_BYTES:
                    raise HttpError(400)
                return None
            return b"".join(out), end + 4
        size_total += size
        if size_total > limit:
            raise HttpError(413)
        if pos + size + 2 > n:
            return None
        if buf[pos + size:pos + size + 2] != b"\r\n":
            raise HttpError(400)
        out.append(bytes(buf[pos:pos + size]))
        pos += size + 2


def render(reply, keep_alive, version, head_only=False):
    """Serialise a Reply into the bytes of an HTTP/1.1 response (only the
    head for a streamed reply: HttpProtocol.pump sends its body)."""
    status = reply.status
    lines = [status_line(status), "Date: ", http_date(), "\r\n"]
    for name, value in reply.headers:
        lines.append("%s: %s\r\n" % (name, value))
    body = reply.body
    if status != 204 and status != 304 and status >= 200:
        if reply.ctype:
            lines.append("Content-Type: %s\r\n" % reply.ctype)
        stream = reply.stream
        if stream is None:
            lines.append("Content-Length: %d\r\n" % len(body))
        elif not stream[1]:
            lines.append("Content-Length: %d\r\n" % stream[0])
        elif version == "HTTP/1.1":
            lines.append("Transfer-Encoding: chunked\r\n")
        else:
            keep_alive = False      # HTTP/1.0: the close ends the body
    else:
        body = EMPTY
    if not keep_alive:
        lines.append("Connection: close\r\n")
    elif version == "HTTP/1.0":
        lines.append("Connection: keep-alive\r\n")
    lines.append("\r\n")
    head = "".join(lines).encode("latin-1", "replace")
    return head if head_only or not body else head + body


# Streamed bodies: {"padding":"xxx...x"} of exactly the requested size (plain
# x's below 14 bytes), sent in STREAM_CHUNK pieces of one shared buffer, only
# while the transport's write buffer is under its high-water mark, so a
# 100 MB body costs no memory and stops as soon as the client goes away.
STREAM_CHUNK = 256 * 1024
STREAM_FILL = memoryview(b"x" * STREAM_CHUNK)
STREAM_PREFIX = b'{"padding":"'
STREAM_SUFFIX = b'"}'
STREAM_HIGH_WATER = 1024 * 1024


def stream_pieces(n):
    """Yield the pieces (bytes or memoryview) of an n-byte streamed body."""
    if n < len(STREAM_PREFIX) + len(STREAM_SUFFIX):
        yield STREAM_FILL[:n]
        return
    yield STREAM_PREFIX
    fill = n - len(STREAM_PREFIX) - len(STREAM_SUFFIX)
    while fill > 0:
        k = min(fill, STREAM_CHUNK)
        yield STREAM_FILL[:k]
        fill -= k
    yield STREAM_SUFFIX


class HttpProtocol(asyncio.Protocol):
    """One client connection. Requests are answered strictly in order; while
    a response is delayed (latency, hang) or its body is being streamed,
    further input is only buffered."""

    def __init__(self, app):
        self.app = app
        self.loop = asyncio.get_running_loop()
        self.transport = None
        self.buf = bytearray()
        self.head = None            # parsed head of a request awaiting its body
        self.continue_sent = False
        self.busy = False           # a response is pending (delay or hang)
        self.closing = False
        self.timer = None
        self.paused = False         # the transport asked us to stop writing
        self.stream = None          # (piece iterator, chunked, keep_alive)

    def connection_made(self, transport):
        self.transport = transport
        transport.set_write_buffer_limits(high=STREAM_HIGH_WATER)
        self.app.connections.add(self)
        self.app.connections_total += 1

    def connection_lost(self, exc):
        self.closing = True
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        if self.stream is not None:
            self.stream = None
            self.app.stats["streams_abandoned"] += 1
        self.app.connections.discard(self)

    def pause_writing(self):
        self.paused = True

    def resume_writing(self):
        self.paused = False
        if self.stream is not None and not self.closing \
                and not self.transport.is_closing() and self.pump() \
                and not self.closing and self.buf:
            self.process()

    def pump(self):
        """Send pieces of the streamed body until the transport pushes back
        or the body ends; resume_writing calls it again. True when the body
        is complete (the caller then goes on with buffered requests)."""
        pieces, chunked, keep_alive = self.stream
        transport = self.transport
        stats = self.app.stats
        # is_closing(): after a reset the transport drops writes and resumes
        # us; the body must stop there, not run on into the void.
        while not self.paused and not self.closing and not transport.is_closing():
            piece = next(pieces, None)
            if piece is None:
                break
            if chunked:
                transport.write(b"%x\r\n" % len(piece))
                transport.write(piece)
                transport.write(b"\r\n")
            else:
                transport.write(piece)
            stats["stream_bytes_sent"] += len(piece)
        else:
            return False            # paused, or the connection is going
        if chunked:
            transport.write(b"0\r\n\r\n")
        self.stream = None
        stats["streams_completed"] += 1
        self.busy = False
        if not keep_alive:
            self.closing = True
            transport.close()
        return True

    def data_received(self, data):
        if self.closing:
            return
        self.buf += data
        if not self.busy:
            self.process()

    def process(self):
        while not self.busy and not self.closing:
            try:
                req = self.parse()
            except HttpError as err:
                self.send_error(err.status)
                return
            if req is None:
                return
            self.dispatch(req)

    def parse(self):
        """Take one complete request off the buffer, or return None."""
        buf = self.buf
        if self.head is None:
            while buf[:2] == b"\r\n":       # tolerate stray CRLF between requests
                del buf[:2]
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                if len(buf) > MAX_HEAD_BYTES:
                    raise HttpError(431)
                return None
            if end > MAX_HEAD_BYTES:
                raise HttpError(431)
            lines = buf[:end].decode("latin-1").split("\r\n")
            del buf[:end + 4]
            request_line = lines[0].split(" ")
            if len(request_line) != 3:
                raise HttpError(400)
            method, target, version = request_line
            if version != "HTTP/1.1" and version != "HTTP/1.0":
                raise HttpError(505 if version.startswith("HTTP/") else 400)
            headers = {}
            for line in lines[1:]:
                name, sep, value = line.partition(":")
                if not sep or not name or name[-1] in " \t" or name[0] in " \t":
                    raise HttpError(400)
                name = name.lower()
                value = value.strip(" \t")
                if name in headers:
                    headers[name] += ", " + value
                else:
                    headers[name] = value
            te = headers.get("transfer-encoding")
            if te is not None:
                if te.lower().rsplit(",", 1)[-1].strip() != "chunked":
                    raise HttpError(501)
                length = -1                 # chunked
            else:
                cl = headers.get("content-length")
                if cl is None:
                    length = 0
                elif cl.isascii() and cl.isdigit():
                    length = int(cl)
                    if length > MAX_BODY_BYTES:
                        raise HttpError(413)
                else:
                    raise HttpError(400)
            self.head = (method, target, version, headers, length)
            self.continue_sent = False
        method, target, version, headers, length = self.head
        if length < 0:
            decoded = parse_chunked(buf, MAX_BODY_BYTES)
            if decoded is None:
                self.maybe_continue(headers, version)
                return None
            body, used = decoded
        else:
            if len(buf) < length:
                self.maybe_continue(headers, version)
                return None
            body, used = bytes(buf[:length]), length
        if used:
            del buf[:used]
        self.head = None

        connection = headers.get("connection", "").lower()
        if version == "HTTP/1.1":
            keep_alive = "close" not in connection
        else:
            keep_alive = "keep-alive" in connection
        if target[:1] != "/" and "://" in target:   # absolute-form target
            target = "/" + target.split("://", 1)[1].partition("/")[2]
        path, _, query_string = target.partition("?")
        if "%" in path:
            path = urllib.parse.unquote(path)
        return Request(method, target, path, query_string, version, headers,
                       body, keep_alive)

    def maybe_continue(self, headers, version):
        if not self.continue_sent and version == "HTTP/1.1" and \
                headers.get("expect", "").lower() == "100-continue":
            self.continue_sent = True
            self.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")

    def dispatch(self, req):
        try:
            reply, action, delay = self.app.handle(req)
        except Exception:                   # a bug in the mock: say so loudly
            traceback.print_exc()
            reply, action, delay = discord_error(500, 0, "500: Internal Server Error"), SEND, 0.0
        if action == HANG:
            self.busy = True                # never answer; wait for the close
            return
        if delay > 0:
            self.busy = True
            self.timer = self.loop.call_later(delay, self.delayed, req, reply, action)
            return
        self.complete(req, reply, action)

    def delayed(self, req, reply, action):
        self.timer = None
        if self.closing:
            return
        self.busy = False
        self.complete(req, reply, action)
        if not self.closing and self.buf:
            self.process()

    def complete(self, req, reply, action):
        if action == DROP or action == RESET:
            self.closing = True
            if action == RESET:
                sock = self.transport.get_extra_info("socket")
                if sock is not None:
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                                    struct.pack("ii", 1, 0))
                self.transport.abort()
            else:
                self.transport.close()
            return
        head_only = req.method == "HEAD"
        self.transport.write(render(reply, req.keep_alive, req.version, head_only))
        stream = reply.stream
        if stream is not None and not head_only and reply.status >= 200 \
                and reply.status not in (204, 304):
            chunked = stream[1] and req.version == "HTTP/1.1"
            keep_alive = req.keep_alive and (req.version == "HTTP/1.1" or not stream[1])
            self.stream = (stream_pieces(stream[0]), chunked, keep_alive)
            self.busy = True
            self.app.stats["streams_started"] += 1
            self.pump()
            return
        if not req.keep_alive:
            self.closing = True
            self.transport.close()

    def send_error(self, status):
        """Protocol-level error: answer and close the connection."""
        reply = discord_error(status, 0, "%d: %s" % (status, http.HTTPStatus(status).phrase))
        self.closing = True
        self.transport.write(render(reply, False, "HTTP/1.1"))
        self.transport.close()


# --------------------------------------------------------------------------
# Entry point
# --------------------------------------------------------------------------

def is_loopback(host):
    """True when every address the host name resolves to is loopback."""
    try:
        infos = socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)
    except OSError:
        return False
    return bool(infos) and all(
        ipaddress.ip_address(info[4][0].split("%")[0]).is_loopback
        for info in infos)


def write_port_file(path, port):
    """Atomically publish the port: write a temp file, then rename it."""
    directory = os.path.dirname(os.path.abspath(path))
    tmp = os.path.join(directory, ".%s.%d.tmp" % (os.path.basename(path), os.getpid()))
    with open(tmp, "w") as fp:
        fp.write("%d\n" % port)
        fp.flush()
        os.fsync(fp.fileno())
    os.replace(tmp, path)


async def serve(args):
    app = MockDiscord(args.bot_token, args.client_id, args.client_secret, args.log)
    loop = asyncio.get_running_loop()
    gw = None
    if args.gateway_port is not None:
        sys.dont_write_bytecode = True      # leave no __pycache__ in the tree
        try:
            import gateway      # only here: it needs python3-websockets
        except ImportError as err:
            print("mock_discord: --gateway-port needs python3-websockets (%s)" % err,
                  file=sys.stderr, flush=True)
            return 1
        gw = gateway.Gateway(app, args.host)
        gw_port = await gw.start(args.gateway_port)
        app.attach_gateway(gw)
        if args.gateway_port_file:
            write_port_file(args.gateway_port_file, gw_port)
        print("mock_discord Gateway on %s (resume %s)" % (gw.url, gw.resume_url),
              file=sys.stderr, flush=True)
    server = await loop.create_server(lambda: HttpProtocol(app), args.host,
                                      args.port, backlog=1024,
                                      reuse_address=True)
    port = server.sockets[0].getsockname()[1]
    if args.port_file:
        write_port_file(args.port_file, port)
    print("mock_discord listening on http://%s:%d" % (args.host, port),
          file=sys.stderr, flush=True)

    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()

    server.close()
    for conn in list(app.connections):
        if conn.transport is not None:
            conn.transport.abort()
    await server.wait_closed()
    if gw is not None:
        await gw.stop()
    if app.log_fp is not None:
        app.log_fp.close()
    for path, value in ((args.port_file, port),
                        (args.gateway_port_file, gw and gw_port)):
        if path:
            try:
                with open(path) as fp:
                    if fp.read().strip() == str(value):
                        os.unlink(path)
            except OSError:
                pass
    return 0


def main(argv=None):
    parser = argparse.ArgumentParser(description="Mock Discord REST API v10 server")
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to bind (loopback only; default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=0,
                        help="port (0 = pick a free one)")
    parser.add_argument("--port-file", help="write the bound port here")
    parser.add_argument("--log", help="append one JSON line per API request")
    parser.add_argument("--bot-token", default=DEFAULT_BOT_TOKEN)
    parser.add_argument("--client-id", default=DEFAULT_CLIENT_ID)
    parser.add_argument("--client-secret", default=DEFAULT_CLIENT_SECRET)
    parser.add_argument("--gateway-port", type=int,
                        help="enable the Gateway on this port (0 = pick a free one)")
    parser.add_argument("--gateway-port-file", help="write the Gateway's port here")
    args = parser.parse_args(argv)
    if args.gateway_port_file and args.gateway_port is None:
        parser.error("--gateway-port-file needs --gateway-port")
    if args.port == 0 and not args.port_file:
        parser.error("--port 0 needs --port-file")
    if not is_loopback(args.host):
        parser.error("--host must be a loopback address (the control API "
                     "has no authentication)")
    return asyncio.run(serve(args))


if __name__ == "__main__":
    sys.exit(main())
