#!/usr/bin/env bash
# tansu, a Kafka-protocol broker written in Rust (crates.io), for the event-log contract tests.
#   tests/tansu.sh install   builds it once into ~/.cargo/bin (about 15 min on 2 cores; cached)
#   tests/tansu.sh start     starts it on a free loopback port and prints shell exports:
#                            TERRA_TEST_KAFKA_BOOTSTRAP=127.0.0.1:PORT and TANSU_PID
set -euo pipefail
VERSION=0.6.0
BIN="${CARGO_HOME:-$HOME/.cargo}/bin/tansu"

case "${1:-}" in
  install)
    if [ -x "$BIN" ] && [ -f "$BIN.version" ] && [ "$(cat "$BIN.version")" = "$VERSION" ]; then
      echo "tansu $VERSION already installed"
      exit 0
    fi
    echo "installing tansu $VERSION (first run on this machine only)"
    cargo install tansu --version "$VERSION" --locked --features libsql --target-dir "${HOME}/.cache/tansu-target" >&2
    echo "$VERSION" > "$BIN.version"
    # the binary is what is cached; its build directory (GBs) would only fill the disk
    rm -rf "${HOME}/.cache/tansu-target"
    ;;
  start)
    port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
    work=$(mktemp -d)
    # tansu's maintenance (at start, then every 10 min by default) deletes the records older
    # than their topic's retention.ms taken as a plain number: retention.ms=-1 ("keep for
    # ever", how terra-ingest creates its topics) deletes every record, while the high
    # watermark stays, so a reader below it gets empty fetches for ever (a run once hung in
    # kcat for 300 s). The suite's records must stay: no maintenance after the start.
    (cd "$work" && exec "$BIN" broker \
        --listener-url "tcp://127.0.0.1:$port" \
        --advertised-listener-url "tcp://127.0.0.1:$port" \
        --storage-engine "sqlite://tansu.db?maintenance_interval=30days" >"$work/tansu.log" 2>&1) &
    pid=$!
    for _ in $(seq 1 100); do
      if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
        echo "export TERRA_TEST_KAFKA_BOOTSTRAP=127.0.0.1:$port TANSU_PID=$pid"
        echo "tansu listening on 127.0.0.1:$port (log: $work/tansu.log)" >&2
        exit 0
      fi
      kill -0 "$pid" 2>/dev/null || { cat "$work/tansu.log" >&2; echo "tansu exited" >&2; exit 1; }
      sleep 0.1
    done
    echo "tansu did not listen on $port within 10 s" >&2
    kill "$pid" 2>/dev/null || true
    exit 1
    ;;
  *)
    echo "usage: $0 install|start" >&2
    exit 2
    ;;
esac
