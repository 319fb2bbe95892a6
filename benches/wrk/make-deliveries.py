#!/usr/bin/env python3
"""Writes N distinct signed webhook deliveries for wrk (deliveries.lua), one per line:
`<terra-signature value>\t<body>`. Each body is a fixture from tests/fixtures/webhooks with
a `"bench_seq": n` field first, signed now with the given secret, as Terra signs each
delivery: the ingress answers a delivery it accepted before from its replay cache, so a
load of repeated bodies would measure that cache, not the ingress.

    benches/wrk/make-deliveries.py SECRET N > /tmp/deliveries.tsv
"""
import hashlib
import hmac
import pathlib
import sys
import time

secret, count = sys.argv[1].encode(), int(sys.argv[2])
root = pathlib.Path(__file__).resolve().parents[2] / "tests" / "fixtures" / "webhooks"
templates = [p.read_bytes() for p in sorted(root.glob("*.json"))]
now = str(int(time.time())).encode()
out = sys.stdout.buffer
for n in range(count):
    t = templates[n % len(templates)]
    body = b'{"bench_seq": %d, ' % n + t[1:]
    assert b"\n" not in body and b"\t" not in body
    mac = hmac.new(secret, now + b"." + body, hashlib.sha256).hexdigest().encode()
    out.write(b"t=" + now + b",v1=" + mac + b"\t" + body + b"\n")
