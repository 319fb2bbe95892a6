#!/usr/bin/env bash
# Azurite (npm `azurite`), Microsoft's Azure Storage emulator: the Blob API on one loopback
# port, for the object projector's Azure tests.
#   tests/azurite.sh install   npm install into ~/.cache/terra-ingest/azurite (about 80 s; cached)
#   tests/azurite.sh start     starts azurite-blob on a free loopback port and prints shell
#                              exports: TERRA_TEST_AZURITE_URL=http://127.0.0.1:PORT,
#                              TERRA_TEST_AZURITE_BIN (to start a private one), AZURITE_PID
# --disableTelemetry is required: without it Azurite connects to an outside address.
# The account is the emulator's well-known `devstoreaccount1`; the tests create their
# containers themselves.
set -euo pipefail
VERSION=3.35.0
DIR="${HOME}/.cache/terra-ingest/azurite"
BIN="$DIR/node_modules/.bin/azurite-blob"

case "${1:-}" in
  install)
    if [ -x "$BIN" ] && [ -f "$DIR/version" ] && [ "$(cat "$DIR/version")" = "$VERSION" ]; then
      echo "azurite $VERSION already installed"
      exit 0
    fi
    command -v npm >/dev/null || { echo "npm is required for Azurite (Debian: apt-get install npm)" >&2; exit 1; }
    echo "installing azurite $VERSION (first run on this machine only)"
    mkdir -p "$DIR"
    # no audit/fund/update calls: only the registry download
    npm install --prefix "$DIR" --no-audit --no-fund --no-update-notifier --loglevel=error \
      "azurite@$VERSION" >&2
    echo "$VERSION" > "$DIR/version"
    ;;
  start)
    port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
    work=$(mktemp -d)
    "$BIN" --blobHost 127.0.0.1 --blobPort "$port" --location "$work" \
      --skipApiVersionCheck --loose --disableTelemetry --silent >"$work/azurite.log" 2>&1 &
    pid=$!
    for _ in $(seq 1 200); do
      if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
        echo "export TERRA_TEST_AZURITE_URL=http://127.0.0.1:$port TERRA_TEST_AZURITE_BIN=$BIN AZURITE_PID=$pid"
        echo "azurite listening on 127.0.0.1:$port (log: $work/azurite.log)" >&2
        exit 0
      fi
      kill -0 "$pid" 2>/dev/null || { cat "$work/azurite.log" >&2; echo "azurite exited" >&2; exit 1; }
      sleep 0.1
    done
    echo "azurite did not listen on $port within 20 s" >&2
    kill "$pid" 2>/dev/null || true
    exit 1
    ;;
  *)
    echo "usage: $0 install|start" >&2
    exit 2
    ;;
esac
