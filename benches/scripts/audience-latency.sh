#!/usr/bin/env bash
# Event → membership change latency (docs/benchmarks.md): `omnifold serve`
# with AUDIENCES audiences configured, one of them `events > 0`, and the
# audience topic on; `omnifold-produce` sends RATE events a second for
# SECONDS, each (almost always) a member's first, from its own process; then
# `omnifold-audience-latency` reads both topics and reports, per member, the
# time from its event's record to its `entered` record (p50, p99, max).
# Needs `make build` first.
#
#   benches/scripts/audience-latency.sh
#   RATE=5000 SECONDS_=10 AUDIENCES=100 benches/scripts/audience-latency.sh
set -euo pipefail
PORT=${PORT:-19100} RATE=${RATE:-2000} SECONDS_=${SECONDS_:-10} N=${AUDIENCES:-10}
. "$(dirname "$0")/common.sh"

export OMNIFOLD_KAFKA__AUDIENCE_TOPIC=omnifold.audiences
# The stream's event times span 30 days: keep them all inside the dedupe
# window, so every event is folded (none refused as too late).
export OMNIFOLD_STORE__DEDUPE_RETENTION_HOURS=87600
config=$(audiences "$((N - 1))")
printf '[audiences.active]\nrule = "events > 0"\n' >>"$config"
export OMNIFOLD_CONFIG=$config
start_tansu
start_serve "$B/omnifold"
sent=$("$B/omnifold-produce" --brokers "$OMNIFOLD_BROKERS" --topic omnifold.events --rate "$RATE" \
  --seconds "$SECONDS_" --members 1000000000 | grep -o '"sent":[0-9]*' | grep -o '[0-9]*')
echo "audiences=$N rate=$RATE/s sent=$sent: $("$B/omnifold-audience-latency" --brokers "$OMNIFOLD_BROKERS" \
  --events omnifold.events --audiences omnifold.audiences --audience active --expect "$((sent * 99 / 100))")"
stop_serve
