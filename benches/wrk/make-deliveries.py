#!/usr/bin/env python3
"""Writes N distinct signed webhook deliveries for wrk (deliveries.lua), one per line:
`<terra-signature value>\t<body>`. Each body is a fixture from tests/fixtures/webhooks with
a `"bench_seq": n` field first, signed now with the given secret, as Terra signs each
delivery: the ingress answers a delivery it accepted before from its replay cache, so a
load of repeated bodies would measure that cache, not the ingress.

    benches/wrk/make-deliveries.py SECRET N > /tmp/deliveries.tsv

With a third argument USERS, every delivery is new data for the projections instead (the
end-to-end benchmark of `standalone`, written apart from terra-bench's own generator): the
user is one of USERS (`wrk-<n>`), every record id gets the delivery's number appended and
every record date moves to its own day, so no two deliveries name the same record:

    benches/wrk/make-deliveries.py SECRET N USERS > /tmp/distinct.tsv
"""
import datetime
import hashlib
import hmac
import json
import pathlib
import sys
import time

secret, count = sys.argv[1].encode(), int(sys.argv[2])
users = int(sys.argv[3]) if len(sys.argv) > 3 else 0
root = pathlib.Path(__file__).resolve().parents[2] / "tests" / "fixtures" / "webhooks"
templates = [p.read_bytes() for p in sorted(root.glob("*.json"))]
now = str(int(time.time())).encode()
out = sys.stdout.buffer
ID_KEYS = {"summary_id", "id", "planned_workout_id", "event_id"}
DAY_KEYS = {"start_time", "end_time", "timestamp", "planned_date"}
EPOCH = datetime.date(2021, 1, 1)


def distinct(value, n, user, day, key=None, in_user=False):
    """A copy of a parsed fixture with its user, record ids and record days replaced."""
    if isinstance(value, dict):
        return {
            k: user if in_user and k == "user_id" and isinstance(v, str)
            else distinct(v, n, user, day, k, k in ("user", "old_user", "new_user"))
            for k, v in value.items()
        }
    if isinstance(value, list):
        return [distinct(v, n, user, day, key) for v in value]
    if isinstance(value, str) and key in ID_KEYS:
        return f"{value}-{n}"
    if isinstance(value, str) and key in DAY_KEYS and len(value) >= 10 and value[4] == "-" and value[7] == "-":
        return day + value[10:]
    return value


parsed = []
for t in templates:
    try:
        parsed.append(json.loads(t))
    except ValueError:
        parsed.append(None)
for n in range(count):
    t = templates[n % len(templates)]
    if users and parsed[n % len(templates)] is not None:
        k = n // len(templates)
        day = (EPOCH + datetime.timedelta(days=k // users)).isoformat()
        value = distinct(parsed[n % len(templates)], n, f"wrk-{k % users}", day)
        if value == parsed[n % len(templates)] or f"-{n}" not in json.dumps(value):
            value = {"bench_seq": n, **value}  # no id of its own to make distinct
        body = json.dumps(value).encode()  # Terra's separators: ", " and ": "
    else:
        body = b'{"bench_seq": %d, ' % n + t[1:]
    assert b"\n" not in body and b"\t" not in body
    mac = hmac.new(secret, now + b"." + body, hashlib.sha256).hexdigest().encode()
    out.write(b"t=" + now + b",v1=" + mac + b"\t" + body + b"\n")
