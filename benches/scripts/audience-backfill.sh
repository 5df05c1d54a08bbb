#!/usr/bin/env bash
# How fast a backfill pass builds a new audience (docs/audiences.md,
# "Backfill"): one `omnifold serve` folds EVENTS events of MEMBERS members
# (4 partitions); then, for each CHUNKS value (members per audienceBackfill
# record), serve is restarted with it, an audience every buyer qualifies for
# is created through AdminService, and the time until it is READY is
# printed with the members per second and serve's CPU. RUNS rounds,
# alternating. Needs `make build` first.
#
#   benches/scripts/audience-backfill.sh
#   RUNS=2 MEMBERS=200000 benches/scripts/audience-backfill.sh
set -euo pipefail
RUNS=${RUNS:-1} PORT=${PORT:-19099} EVENTS=${EVENTS:-400000} MEMBERS=${MEMBERS:-100000}
. "$(dirname "$0")/common.sh"

echo "starting tansu on :$PORT and producing $EVENTS events of $MEMBERS members" >&2
start_tansu
"$B/omnifold-produce" --file "$work/events.jsonl" --count "$EVENTS" --members "$MEMBERS" >/dev/null
"$B/omnifold" produce --file "$work/events.jsonl" >/dev/null
start_serve "$B/omnifold"
for _ in $(seq 6000); do [ "$(folded || true)" -ge "$EVENTS" ] 2>/dev/null && break; sleep 0.05; done
stop_serve
for i in $(seq 1 "$RUNS"); do
  for chunk in ${CHUNKS:-1000 10000}; do
    export OMNIFOLD_KAFKA__AUDIENCE_BACKFILL_MEMBERS=$chunk
    start_serve "$B/omnifold"
    name=b${i}_$chunk
    s0=$(ticks "$serve") started=$(date +%s.%N)
    wait_for "$B/omnifold" audiences create "$name" --rule 'orders > 0' --server "http://$addr"
    until "$B/omnifold" audiences get "$name" --server "http://$addr" | grep -q READY; do sleep 0.05; done
    took=$(awk -v a="$started" -v b="$(date +%s.%N)" 'BEGIN { printf "%.2f", b - a }')
    size=$("$B/omnifold" audiences get "$name" --server "http://$addr" --json | grep -o '"size": *"[0-9]*"' | grep -o '[0-9]*')
    echo "run $i chunk=$chunk: $size members in the audience, built in ${took} s ($(awk -v t="$took" -v n="$MEMBERS" 'BEGIN { printf "%.0f", n / t }') members/s evaluated), serve_cpu_s=$(cents $(( $(ticks "$serve") - s0 )))"
    stop_serve
  done
done
