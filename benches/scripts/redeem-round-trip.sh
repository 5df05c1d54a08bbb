#!/usr/bin/env bash
# The RedeemPoints round trip against the real `omnifold serve` and a fresh
# tansu: 100,000 events of 5,000 members, then RUNS runs of `omnifold-load
# --target redeem` (32 in flight, 5 s each, one after another) with the CPU
# that serve and tansu used in each. Needs `make build` first.
#
#   benches/scripts/redeem-round-trip.sh            # 4 runs, 32 in flight
#   RUNS=2 CONCURRENCY=1 FETCH_WAIT_MS=2 benches/scripts/redeem-round-trip.sh
set -euo pipefail
RUNS=${RUNS:-4} CONCURRENCY=${CONCURRENCY:-32} PORT=${PORT:-19092}
. "$(dirname "$0")/common.sh"
[ -n "${FETCH_WAIT_MS:-}" ] && export OMNIFOLD_KAFKA__FETCH_WAIT_MAX_MS=$FETCH_WAIT_MS

start_tansu_with_events
start_serve "$B/omnifold"
echo "serving on $addr; waiting for the first redemption (ingest caught up)" >&2
wait_caught_up 3
for i in $(seq 1 "$RUNS"); do
  s0=$(ticks $serve) t0=$(ticks $tansu)
  r=$("$B/omnifold-load" --addr "$addr" --target redeem --concurrency "$CONCURRENCY" --seconds 5 --members 5000)
  echo "run $i: $r serve_cpu_s=$(cents $(( $(ticks $serve) - s0 ))) tansu_cpu_s=$(cents $(( $(ticks $tansu) - t0 )))"
done
