#!/usr/bin/env bash
# The RedeemPoints round trip against the real `omnifold serve` and a fresh
# tansu: 100,000 events of 5,000 members, then RUNS runs of `omnifold-load
# --target redeem` (32 in flight, 5 s each, one after another) with the CPU
# that serve and tansu used in each. Needs `make build` first.
#
#   benches/scripts/redeem-round-trip.sh            # 4 runs, 32 in flight
#   RUNS=2 CONCURRENCY=1 FETCH_WAIT_MS=2 benches/scripts/redeem-round-trip.sh
set -euo pipefail
B=${OMNIFOLD_RELEASE_DIR:-$(cd "$(dirname "$0")/../.." && pwd)/target/release}
RUNS=${RUNS:-4} CONCURRENCY=${CONCURRENCY:-32} PORT=${PORT:-19092}
work=$(mktemp -d)
cleanup() { kill "${serve:-}" "${tansu:-}" 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT
export OMNIFOLD_BROKERS=127.0.0.1:$PORT OMNIFOLD_KAFKA__INTERNAL_SECRET=$("$B/omnifold" secret)
[ -n "${FETCH_WAIT_MS:-}" ] && export OMNIFOLD_KAFKA__FETCH_WAIT_MAX_MS=$FETCH_WAIT_MS
ticks() { awk '{print $14+$15}' "/proc/$1/stat"; }   # user+system CPU, 1/100 s
cents() { awk -v t="$1" 'BEGIN { printf "%.2f", t / 100 }'; }

echo "starting tansu on :$PORT and producing 100,000 events" >&2
tansu broker --listener-url "tcp://127.0.0.1:$PORT" --advertised-listener-url "tcp://127.0.0.1:$PORT" \
  --storage-engine memory://tansu/ >"$work/tansu.log" 2>&1 &
tansu=$!
# Waits up to 30 s for a command to succeed, else stops with the logs.
wait_for() {
  for _ in $(seq 150); do "$@" >/dev/null 2>&1 && return; sleep 0.2; done
  echo "gave up waiting for: $*" >&2; cat "$work"/*.log >&2; exit 1
}
wait_for "$B/omnifold" topics create --partitions 4
"$B/omnifold-produce" --file "$work/events.jsonl" --count 100000 --members 5000 >/dev/null
"$B/omnifold" produce --file "$work/events.jsonl" >/dev/null
"$B/omnifold" serve --data-dir "$work/data" --listen 127.0.0.1:0 >"$work/serve.out" 2>"$work/serve.log" &
serve=$!
wait_for grep -q "serving gRPC on" "$work/serve.out"
addr=$(sed -n 's/.*serving gRPC on //p' "$work/serve.out")
echo "serving on $addr; waiting for the first redemption (ingest caught up)" >&2
"$B/omnifold-load" --addr "$addr" --target redeem --concurrency 1 --seconds 3 --members 5000 >/dev/null
for i in $(seq 1 "$RUNS"); do
  s0=$(ticks $serve) t0=$(ticks $tansu)
  r=$("$B/omnifold-load" --addr "$addr" --target redeem --concurrency "$CONCURRENCY" --seconds 5 --members 5000)
  echo "run $i: $r serve_cpu_s=$(cents $(( $(ticks $serve) - s0 ))) tansu_cpu_s=$(cents $(( $(ticks $tansu) - t0 )))"
done
