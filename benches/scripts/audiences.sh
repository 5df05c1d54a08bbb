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

# A configuration file with $1 audiences, cycling through rule shapes.
audiences() {
  local n=$1 file=$work/audiences-$1.toml
  : >"$file"
  for k in $(seq 1 "$n"); do
    case $((k % 10)) in
      0) rule="orders(within=$((k % 300 + 1))d) > 0" ;;
      1) rule="spend(within=365d) >= $((k * 10))" ;;
      2) rule="tier >= GOLD and since_last_order < $((k % 90 + 1))d" ;;
      3) rule="products_viewed(within=$((k % 30 + 1))d) > 0" ;;
      4) rule="points_expiring(within=$((k % 60 + 1))d) > 0" ;;
      5) rule="affinity(\"c$((k % 7))\") > 0.2" ;;
      6) rule="consented(\"marketing\") and orders > $((k % 5))" ;;
      7) rule="events(MOBILE_APP) > $((k % 20))" ;;
      8) rule="since_last_seen < $((k % 45 + 1))d or not enrolled" ;;
      9) rule="not has_trait(\"city\") or trait(\"city\") == \"Shanghai\"" ;;
    esac
    printf '[audiences.a%03d]\nrule = %s\n' "$k" "'$rule'" >>"$file"
  done
  echo "$file"
}

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
