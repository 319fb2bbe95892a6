#!/usr/bin/env bash
# moto's server (PyPI `moto[server]`): S3 and SQS on one loopback port, for the object
# projector's tests, plus off-the-shelf clients: boto3, and grpcio with reflection for the
# query service.
#   tests/moto.sh install   a venv under ~/.cache/terra-ingest/moto-venv (about 70 s; cached)
#   tests/moto.sh start     starts it (through tests/moto_server.py, which makes its
#                           conditional PUTs atomic, as S3's are) on a free loopback port
#                           and prints shell exports:
#                           TERRA_TEST_S3_ENDPOINT=http://127.0.0.1:PORT, MOTO_PID,
#                           TERRA_TEST_PYTHON (the venv's python, with boto3)
set -euo pipefail
VENV="${HOME}/.cache/terra-ingest/moto-venv"

case "${1:-}" in
  install)
    if [ -x "$VENV/bin/moto_server" ] && "$VENV/bin/python" -c 'import boto3, grpc, grpc_reflection, grpc_health' 2>/dev/null; then
      echo "moto already installed"
      exit 0
    fi
    echo "installing moto[server], boto3 and grpcio (first run on this machine only)"
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install -q 'moto[server]' boto3 grpcio grpcio-reflection grpcio-health-checking >&2
    ;;
  start)
    port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
    log=$(mktemp)
    # moto's server with atomic object requests (conditional PUTs): tests/moto_server.py
    "$VENV/bin/python" "$(dirname "$0")/moto_server.py" -H 127.0.0.1 -p "$port" >"$log" 2>&1 &
    pid=$!
    for _ in $(seq 1 150); do
      if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
        echo "export TERRA_TEST_S3_ENDPOINT=http://127.0.0.1:$port MOTO_PID=$pid TERRA_TEST_PYTHON=$VENV/bin/python TERRA_TEST_MOTO_SERVER=$VENV/bin/moto_server AWS_ACCESS_KEY_ID=test AWS_SECRET_ACCESS_KEY=test AWS_REGION=us-east-1"
        echo "moto listening on 127.0.0.1:$port (log: $log)" >&2
        exit 0
      fi
      kill -0 "$pid" 2>/dev/null || { cat "$log" >&2; echo "moto exited" >&2; exit 1; }
      sleep 0.1
    done
    echo "moto did not listen on $port within 15 s" >&2
    kill "$pid" 2>/dev/null || true
    exit 1
    ;;
  *)
    echo "usage: $0 install|start" >&2
    exit 2
    ;;
esac
