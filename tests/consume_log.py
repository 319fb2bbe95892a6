#!/usr/bin/env python3
"""Reads terra-ingest's log topic as a downstream team would: confluent-kafka (librdkafka) in
a consumer group of its own, each value decoded with Python code generated from
proto/terra/ingest/v1/envelope.proto by protoc (grpcio-tools). docs/consuming-the-log.md
shows the same; tests/e2e/kafka_tools.rs runs it against the suite's broker.

usage: consume_log.py BOOTSTRAP TOPIC COUNT PROTO_ROOT
Prints one JSON object per record: partition, offset, key, headers and the envelope's
fields (bytes as base64), then exits once COUNT records were read (or after 60 s).
"""
import base64
import importlib
import json
import os
import sys
import tempfile
import time
import uuid

import grpc_tools
from confluent_kafka import Consumer
from google.protobuf.json_format import MessageToDict
from grpc_tools import protoc


def envelope_class(proto_root):
    """Generates envelope_pb2 into a temporary folder and imports its Envelope message."""
    out = tempfile.mkdtemp()
    well_known = os.path.join(os.path.dirname(grpc_tools.__file__), "_proto")
    status = protoc.main([
        "protoc", f"-I{proto_root}", f"-I{well_known}", f"--python_out={out}",
        "terra/ingest/v1/envelope.proto",
    ])
    if status != 0:
        sys.exit(f"protoc failed ({status})")
    sys.path.insert(0, out)
    return importlib.import_module("terra.ingest.v1.envelope_pb2").Envelope


def main():
    bootstrap, topic, count, proto_root = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
    Envelope = envelope_class(proto_root)
    consumer = Consumer({
        "bootstrap.servers": bootstrap,
        "group.id": f"downstream-{uuid.uuid4()}",
        # a new group starts at the beginning of the log
        "auto.offset.reset": "earliest",
        "enable.auto.commit": False,
    })
    consumer.subscribe([topic])
    seen, deadline = 0, time.time() + 60
    try:
        while seen < count and time.time() < deadline:
            msg = consumer.poll(1.0)
            if msg is None:
                continue
            if msg.error():
                sys.exit(f"consumer error: {msg.error()}")
            envelope = Envelope()
            envelope.ParseFromString(msg.value())
            fields = MessageToDict(envelope, preserving_proto_field_name=True)
            print(json.dumps({
                "partition": msg.partition(),
                "offset": msg.offset(),
                "key": msg.key().decode() if msg.key() is not None else None,
                "headers": {k: v.decode() for k, v in (msg.headers() or [])},
                # MessageToDict gives bytes as base64 already; the body once more from the field
                "body": base64.b64encode(envelope.body).decode(),
                "envelope": fields,
            }), flush=True)
            consumer.commit(message=msg, asynchronous=False)
            seen += 1
    finally:
        consumer.close()
    if seen < count:
        sys.exit(f"read {seen} of {count} records")


if __name__ == "__main__":
    main()
