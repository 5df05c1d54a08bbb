#!/usr/bin/env bash
# What configured audiences cost a profile read: GetProfile evaluates every
# audience for the member it returns (docs/audiences.md). A fresh tansu,
# 100,000 events of 5,000 members folded once, then RUNS rounds in which
# `omnifold serve` answers with 0, 10 and 100 audiences configured (a mix
# of every kind of measure), in turn, and `omnifold-load --target profile`
# runs for 5 s at CONCURRENCY, with the CPU serve used. Needs `make build`.
#
#   benches/scripts/audiences.sh
#   RUNS=3 CONCURRENCY=32 benches/scripts/audiences.sh
set -euo pipefail
RUNS=${RUNS:-2} CONCURRENCY=${CONCURRENCY:-32} TARGET=profile PORT=${PORT:-19097}
. "$(dirname "$0")/common.sh"

start_tansu_with_events
start_serve "$B/omnifold"
wait_caught_up 2
stop_serve
for i in $(seq 1 "$RUNS"); do
  for n in 0 10 100; do
    export OMNIFOLD_CONFIG=$(audiences "$n")
    start_serve "$B/omnifold"
    measure "run $i audiences=$n"
    stop_serve
  done
done
