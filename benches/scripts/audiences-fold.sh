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
    export OMNIFOLD_KAFKA__GROUP_ID=bench-$i-$n   # nothing committed: every event is folded
    fold_round "run $i audiences=$n"
  done
done
