#!/usr/bin/env bash
# The ingress against a bare server with wrk as the client (a client terra-bench does not
# write), and each server's CPU per request from /proc: the bare server (`terra-bench
# bare-server`) for SECONDS, then `terra-ingest ingress` on a fresh embedded log in DATA_PARENT
# (default: the current directory, so on the disk), each with deliveries signed just before.
#
#   benches/wrk/ratio.sh TERRA_INGEST TERRA_BENCH [SECONDS] [CONNECTIONS]
#
# Prints req/s, CPU µs per request and context switches per request of each server, the share
# of the machine left idle during each phase (idle and I/O wait from /proc/stat: a server whose
# phase leaves the cores idle is bound by waiting, not by its CPU), and the ratio. Needs wrk,
# python3 and curl. It asserts nothing. On a freshly booted VM run benches/warm-memory.py first.
set -euo pipefail
ingest=$1 bench=$2 seconds=${3:-10} connections=${4:-128}
here=$(cd "$(dirname "$0")" && pwd)
secret=whsec_bench_0123456789
tsv=$(mktemp /tmp/deliveries.XXXXXX.tsv)
data=$(mktemp -d "${DATA_PARENT:-$PWD}/ratio.XXXXXX")
trap 'rm -rf "$tsv" "$data"; kill "${server:-0}" 2>/dev/null || true' EXIT
ticks=$(getconf CLK_TCK)

cpu() { awk '{print $14 + $15}' "/proc/$1/stat"; }
# all ticks, and the idle + I/O wait ticks, of the whole machine
machine() { awk '/^cpu / {t = 0; for (i = 2; i <= NF; i++) t += $i; print t, $5 + $6}' /proc/stat; }
switches() { cat /proc/"$1"/task/*/status | awk '/ctxt_switches/ {s += $2} END {print s}'; }
wait_up() { for _ in $(seq 100); do curl -sf "http://127.0.0.1:$1$2" >/dev/null && return; sleep 0.1; done; echo "server on $1 did not start" >&2; exit 1; }

# measure NAME PORT: load the server for $seconds; prints "req/s us/req switches/req non-2xx"
measure() {
  python3 "$here/make-deliveries.py" "$secret" "$((seconds * 60000))" > "$tsv"
  local c0 s0 m0 out
  c0=$(cpu "$server") s0=$(switches "$server") m0=$(machine)
  out=$(wrk -t2 -c"$connections" -d"${seconds}s" -s "$here/deliveries.lua" "http://127.0.0.1:$2" -- "$tsv" 2)
  local c1 s1 m1 n rate bad
  c1=$(cpu "$server") s1=$(switches "$server") m1=$(machine)
  n=$(awk '/requests in/ {print $1}' <<<"$out")
  rate=$(awk '/Requests\/sec/ {print $2}' <<<"$out")
  bad=$(awk '/Non-2xx/ {print $5}' <<<"$out")
  awk -v name="$1" -v r="$rate" -v c="$((c1 - c0))" -v s="$((s1 - s0))" -v n="$n" -v t="$ticks" -v bad="${bad:-0}" \
    -v m0="$m0" -v m1="$m1" \
    'BEGIN {split(m0, a, " "); split(m1, b, " "); idle = 100 * (b[2] - a[2]) / (b[1] - a[1]);
      printf "%-8s %10.0f req/s %7.1f us CPU/req %6.2f switches/req  machine idle %3.0f%%  non-2xx %s\n", name, r, c * 1e6 / t / n, s / n, idle, bad}'
  echo "$rate" > "$data/$1.rate"
}

port=$((20000 + RANDOM % 20000))
"$bench" bare-server --http-addr "127.0.0.1:$port" >/dev/null 2>&1 & server=$!
wait_up "$port" /
measure bare "$port"
kill "$server"; wait "$server" 2>/dev/null || true

port=$((port + 1))
RUST_LOG=warn "$ingest" ingress --http-addr "127.0.0.1:$port" --log "embedded:$data/log" \
  --signing-secret "$secret" --data-dir "$data" >/dev/null 2>&1 & server=$!
wait_up "$port" /readyz
measure ingress "$port"
kill "$server"; wait "$server" 2>/dev/null || true
awk -v i="$(cat "$data/ingress.rate")" -v b="$(cat "$data/bare.rate")" 'BEGIN {printf "ratio ingress/bare: %.3f\n", i / b}'
