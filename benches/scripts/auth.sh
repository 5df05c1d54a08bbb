#!/usr/bin/env bash
# What authentication costs a read: `omnifold serve` on one store with
# authentication on (every call carries an API key, checked by its SHA-256,
# and its scope) and off (`auth.enabled = false`), alternating, RUNS rounds;
# each round `omnifold-load --target TARGET` runs for 5 s at CONCURRENCY and
# prints its report with the CPU serve used. Needs `make build` first.
#
#   benches/scripts/auth.sh
#   RUNS=3 TARGET=profile CONCURRENCY=32 benches/scripts/auth.sh
set -euo pipefail
RUNS=${RUNS:-3} CONCURRENCY=${CONCURRENCY:-32} TARGET=${TARGET:-profile} PORT=${PORT:-19094}
. "$(dirname "$0")/common.sh"

start_tansu_with_events
start_serve "$B/omnifold"
wait_caught_up 2
stop_serve
for i in $(seq 1 "$RUNS"); do
  for auth in on off; do
    if [ "$auth" = off ]; then export OMNIFOLD_AUTH__ENABLED=false; else unset OMNIFOLD_AUTH__ENABLED; fi
    start_serve "$B/omnifold"
    measure "run $i auth=$auth"
    stop_serve
  done
done
