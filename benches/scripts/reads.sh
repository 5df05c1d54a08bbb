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
RUNS=${RUNS:-2} CONCURRENCY=${CONCURRENCY:-32} TARGET=${TARGET:-profile} PORT=${PORT:-19093}
. "$(dirname "$0")/common.sh"
SERVE_BINS=${SERVE_BINS:-$B/omnifold}

start_tansu_with_events
start_serve "${SERVE_BINS%% *}"
wait_caught_up 2
stop_serve
for i in $(seq 1 "$RUNS"); do
  for bin in $SERVE_BINS; do
    start_serve "$bin"
    measure "run $i $bin"
    stop_serve
  done
done
