#!/usr/bin/env bash
# What the change stream costs ingest: a fresh `omnifold serve` (a fresh
# store and consumer group) folds the same 500,000 events (EVENTS; 5,000 members,
# 4 partitions) with the change stream off (`server.watch_buffer_bytes =
# 0`), on with nobody watching (the default), and with the profile-changes
# topic on as well (`kafka.changes_topic`, a fresh topic per run),
# alternating, RUNS rounds; prints the time from start until every event
# is folded, and serve's CPU.
# (A watched partition's cost is not measured here: a fresh instance
# refuses watches until it has caught up, which is the whole fold.)
# Needs `make build` first.
#
#   benches/scripts/watch.sh
#   RUNS=5 benches/scripts/watch.sh
set -euo pipefail
RUNS=${RUNS:-3} PORT=${PORT:-19095} EVENTS=${EVENTS:-500000}
. "$(dirname "$0")/common.sh"

start_tansu_with_events
for i in $(seq 1 "$RUNS"); do
  for watch in ${MODES:-off unwatched topic}; do
    if [ "$watch" = off ]; then export OMNIFOLD_SERVER__WATCH_BUFFER_BYTES=0; else unset OMNIFOLD_SERVER__WATCH_BUFFER_BYTES; fi
    unset OMNIFOLD_KAFKA__CHANGES_TOPIC
    if [ "$watch" = topic ]; then
      export OMNIFOLD_KAFKA__CHANGES_TOPIC=bench-changes-$i
      "$B/omnifold" topics create --partitions 4 >/dev/null
    fi
    export OMNIFOLD_KAFKA__GROUP_ID=bench-$i-$watch   # nothing committed: every event is folded
    fold_round "run $i watch=$watch"
  done
done
