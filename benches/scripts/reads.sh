#!/usr/bin/env bash
# Read throughput of one or more `omnifold serve` binaries on the same
# store, alternating, for A/B comparisons on a noisy machine: a fresh tansu,
# 100,000 events of 5,000 members folded once, then RUNS rounds in which
# each binary of SERVE_BINS serves the store in turn and `omnifold-load
# --target TARGET` runs for 5 s at CONCURRENCY, with the CPU serve used.
# Needs `make build` first.
#
#   benches/scripts/reads.sh                                   # target/release/omnifold
#   SERVE_BINS="/tmp/a /tmp/b" RUNS=3 TARGET=profile CONCURRENCY=32 benches/scripts/reads.sh
set -euo pipefail
B=${OMNIFOLD_RELEASE_DIR:-$(cd "$(dirname "$0")/../.." && pwd)/target/release}
SERVE_BINS=${SERVE_BINS:-$B/omnifold}
RUNS=${RUNS:-2} CONCURRENCY=${CONCURRENCY:-32} TARGET=${TARGET:-profile} PORT=${PORT:-19093}
work=$(mktemp -d)
cleanup() { kill "${serve:-}" "${tansu:-}" 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT
export OMNIFOLD_BROKERS=127.0.0.1:$PORT OMNIFOLD_KAFKA__INTERNAL_SECRET=$("$B/omnifold" secret)
ticks() { awk '{print $14+$15}' "/proc/$1/stat"; }   # user+system CPU, 1/100 s
cents() { awk -v t="$1" 'BEGIN { printf "%.2f", t / 100 }'; }
wait_for() {
  for _ in $(seq 150); do "$@" >/dev/null 2>&1 && return; sleep 0.2; done
  echo "gave up waiting for: $*" >&2; cat "$work"/*.log >&2; exit 1
}
start_serve() {
  "$1" serve --data-dir "$work/data" --listen 127.0.0.1:0 >"$work/serve.out" 2>"$work/serve.log" &
  serve=$!
  wait_for grep -q "serving gRPC on" "$work/serve.out"
  addr=$(sed -n 's/.*serving gRPC on //p' "$work/serve.out")
}
stop_serve() { kill "$serve"; wait "$serve" 2>/dev/null || true; }

echo "starting tansu on :$PORT and folding 100,000 events of 5,000 members" >&2
tansu broker --listener-url "tcp://127.0.0.1:$PORT" --advertised-listener-url "tcp://127.0.0.1:$PORT" \
  --storage-engine memory://tansu/ >"$work/tansu.log" 2>&1 &
tansu=$!
wait_for "$B/omnifold" topics create --partitions 4
"$B/omnifold-produce" --file "$work/events.jsonl" --count 100000 --members 5000 >/dev/null
"$B/omnifold" produce --file "$work/events.jsonl" >/dev/null
start_serve "${SERVE_BINS%% *}"
# A redemption is decided once ingest has reached it: then every event is in.
"$B/omnifold-load" --addr "$addr" --target redeem --concurrency 1 --seconds 2 --members 5000 >/dev/null
stop_serve
for i in $(seq 1 "$RUNS"); do
  for bin in $SERVE_BINS; do
    start_serve "$bin"
    "$B/omnifold-load" --addr "$addr" --target "$TARGET" --concurrency "$CONCURRENCY" --seconds 1 --members 5000 >/dev/null
    s0=$(ticks "$serve")
    r=$("$B/omnifold-load" --addr "$addr" --target "$TARGET" --concurrency "$CONCURRENCY" --seconds 5 --members 5000)
    echo "run $i $bin: $r serve_cpu_s=$(cents $(( $(ticks "$serve") - s0 )))"
    stop_serve
  done
done
