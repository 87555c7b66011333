#!/usr/bin/python3
"""
test/soak/mockctl.py - small client of the mock Discord server's control API
for test/soak/run.

    mockctl.py PORT METHOD PATH [JSON]     one call; prints the JSON answer
    mockctl.py PORT check DMFILE ACCOUNTS GUILD MANAGED
        the end-of-soak checks against what the mock holds:
        DMFILE   lines "n|parts|state" (one per soak DM, state of its job)
        ACCOUNTS lines "discord_user_id|desired role ids, comma-separated"
        MANAGED  comma-separated managed (role_map) role ids
        prints key=value lines: dm_messages, dm_expected, dm_missing,
        dm_duplicates, dm_unexpected, members_checked, members_drifted, and
        a few "drift ..." / "missing ..." examples on stderr.

Every call has a timeout; a failure exits non-zero with the error on stderr.
"""

import collections
import json
import re
import sys
import urllib.error
import urllib.request

TIMEOUT = 30
TAG_RE = re.compile(r"^\[soak-dm-(\d+)-(\d+)\]")


def call(port, method, path, body=None):
    data = body.encode() if isinstance(body, str) else (
        json.dumps(body).encode() if body is not None else None)
    req = urllib.request.Request("http://127.0.0.1:%s%s" % (port, path), data=data,
                                 method=method, headers={"content-type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=TIMEOUT) as resp:
            return json.loads(resp.read() or b"null")
    except urllib.error.HTTPError as err:
        if err.code == 404:
            return None
        raise


def check(port, dm_file, accounts_file, guild, managed):
    managed = set(x for x in managed.split(",") if x)
    expected = {}                # (n, k) -> job state
    with open(dm_file) as fp:
        for line in fp:
            line = line.strip()
            if not line:
                continue
            n, parts, state = line.split("|")
            for k in range(1, int(parts) + 1):
                expected[(int(n), k)] = state
    messages = call(port, "GET", "/_mock/messages")
    seen = collections.Counter()
    contents = collections.Counter()
    for m in messages:
        match = TAG_RE.match(m["content"])
        if match:
            seen[(int(match.group(1)), int(match.group(2)))] += 1
            contents[m["content"]] += 1
    must = {key for key, state in expected.items() if state == "done"}
    missing = sorted(must - set(seen))
    unexpected = sorted(set(seen) - set(expected))
    # A part posted twice has the same content twice.
    duplicates = sum(c - 1 for c in contents.values() if c > 1)
    print("dm_messages=%d" % sum(seen.values()))
    print("dm_expected=%d" % len(must))
    print("dm_missing=%d" % len(missing))
    print("dm_duplicates=%d" % duplicates)
    print("dm_unexpected=%d" % len(unexpected))
    for key in missing[:5]:
        print("missing DM part soak-dm-%d-%d" % key, file=sys.stderr)
    for content, c in list((x, c) for x, c in contents.items() if c > 1)[:5]:
        print("duplicate DM (%d times): %s" % (c, content[:40]), file=sys.stderr)

    checked = drifted = 0
    with open(accounts_file) as fp:
        for line in fp:
            line = line.strip()
            if not line:
                continue
            did, desired = line.split("|", 1)
            desired = set(x for x in desired.split(",") if x)
            member = call(port, "GET", "/_mock/members/%s/%s" % (guild, did))
            held = set(member["roles"]) & managed if member else set()
            checked += 1
            if held != desired:
                drifted += 1
                if drifted <= 5:
                    print("drift %s: Discord has %s, desired %s"
                          % (did, sorted(held), sorted(desired)), file=sys.stderr)
    print("members_checked=%d" % checked)
    print("members_drifted=%d" % drifted)


def main(argv):
    if len(argv) >= 3 and argv[2] == "check":
        check(argv[1], argv[3], argv[4], argv[5], argv[6])
        return 0
    if len(argv) not in (4, 5):
        print(__doc__, file=sys.stderr)
        return 2
    out = call(argv[1], argv[2], argv[3], argv[4] if len(argv) == 5 else None)
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main(sys.argv))
    except Exception as err:           # report, never hang
        print("mockctl: %s" % err, file=sys.stderr)
        sys.exit(1)
