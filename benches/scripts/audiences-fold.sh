#!/usr/bin/env bash
# What audiences cost the fold: a fresh `omnifold serve` (a fresh store and
# consumer group) folds the same 500,000 events (EVENTS; 5,000 members, 4
# partitions) with 0, 10 and 100 audiences configured (a mix of every kind
# of measure, evaluated after every event, timers firing as event time
# passes), alternating, RUNS rounds; prints the time from start until
# every event is folded, and serve's CPU. Needs `make build` first.
#
#   benches/scripts/audiences-fold.sh
#   RUNS=3 benches/scripts/audiences-fold.sh
set -euo pipefail
RUNS=${RUNS:-2} PORT=${PORT:-19098} EVENTS=${EVENTS:-500000}
. "$(dirname "$0")/common.sh"

start_tansu_with_events
for i in $(seq 1 "$RUNS"); do
  for n in ${COUNTS:-0 10 100}; do
    export OMNIFOLD_CONFIG=$(audiences "$n")
    rm -rf "$work/data"
    export OMNIFOLD_KAFKA__GROUP_ID=bench-$i-$n   # nothing committed: every event is folded
    started=$(date +%s.%N)
    start_serve "$B/omnifold"
    for _ in $(seq 6000); do [ "$(folded || true)" -ge "$EVENTS" ] 2>/dev/null && break; sleep 0.05; done
    took=$(awk -v a="$started" -v b="$(date +%s.%N)" 'BEGIN { printf "%.2f", b - a }')
    echo "run $i audiences=$n: $EVENTS events folded in ${took} s ($(awk -v t="$took" -v n="$EVENTS" 'BEGIN { printf "%.0f", n / t }') events/s), serve_cpu_s=$(cents "$(ticks "$serve")")"
    stop_serve
  done
done
