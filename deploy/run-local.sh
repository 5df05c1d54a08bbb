#!/usr/bin/env bash
# The local default: a tansu broker on loopback (sqlite storage under
# .omnifold/), the topics, `omnifold serve`, and a demo data set.
# Ctrl-C stops omnifold (last batch committed) and the broker.
set -euo pipefail

DATA=${OMNIFOLD_DATA:-.omnifold}
PORT=${BROKER_PORT:-9092}
GRPC=${GRPC_LISTEN:-127.0.0.1:50051}
HTTP=${HTTP_LISTEN:-127.0.0.1:8080}
OPS=${METRICS_LISTEN:-127.0.0.1:9464}
BIN=${OMNIFOLD_BIN:-target/release/omnifold}
MEMBERS=${DEMO_MEMBERS:-1000}
BIN=$(realpath "$BIN")
mkdir -p "$DATA"
export OMNIFOLD_BROKERS=127.0.0.1:$PORT
# One instance on this machine: it reads every partition, no group to wait for.
export OMNIFOLD_KAFKA__ASSIGNMENT=${OMNIFOLD_KAFKA__ASSIGNMENT:-all}
# The HTTP API for partners, and the operator's port (metrics, probes).
export OMNIFOLD_SERVER__HTTP_LISTEN=${OMNIFOLD_SERVER__HTTP_LISTEN:-$HTTP}
export OMNIFOLD_SERVER__METRICS_LISTEN=${OMNIFOLD_SERVER__METRICS_LISTEN:-$OPS}
# The secret omnifold signs its own records with, made once and kept.
if [ ! -s "$DATA/internal.secret" ]; then
  (umask 077 && "$BIN" secret >"$DATA/internal.secret")
fi
export OMNIFOLD_KAFKA__INTERNAL_SECRET=${OMNIFOLD_KAFKA__INTERNAL_SECRET:-$(cat "$DATA/internal.secret")}
# A development API key with every scope, made once and kept: every call
# carries credentials (docs/security.md); the CLI reads OMNIFOLD_API_KEY.
if [ ! -s "$DATA/dev.key" ] || [ ! -s "$DATA/keys.toml" ]; then
  rm -f "$DATA/keys.toml"
  (umask 077 && "$BIN" keys new --name dev --scopes all --file "$DATA/keys.toml" >"$DATA/dev.key" 2>/dev/null)
fi
export OMNIFOLD_AUTH__KEYS_FILE=${OMNIFOLD_AUTH__KEYS_FILE:-$DATA/keys.toml}
export OMNIFOLD_API_KEY=${OMNIFOLD_API_KEY:-$(cat "$DATA/dev.key")}

pids=()
# Stops omnifold first (it commits its last batch), then the broker.
cleanup() {
  trap - EXIT INT TERM
  for pid in "${pids[@]}"; do
    kill -TERM "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
  done
}
trap cleanup EXIT
trap 'cleanup; exit 0' INT TERM

port_open() { (echo >"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
wait_port() {
  for _ in $(seq 1 200); do port_open "$1" && return 0; sleep 0.1; done
  echo "nothing listens on port $1; see $DATA/*.log" >&2
  return 1
}

if port_open "$PORT"; then
  echo "using the broker already on 127.0.0.1:$PORT"
else
  echo "starting tansu on 127.0.0.1:$PORT (storage: $DATA/tansu.db)"
  (cd "$DATA" && exec tansu broker --listener-url "tcp://127.0.0.1:$PORT" \
    --advertised-listener-url "tcp://127.0.0.1:$PORT" --storage-engine sqlite://tansu.db) >"$DATA/tansu.log" 2>&1 &
  pids+=($!)
  wait_port "$PORT"
fi

"$BIN" topics create --partitions 8
"$BIN" serve --listen "$GRPC" --data-dir "$DATA/store" &
pids=($! "${pids[@]}")
wait_port "${GRPC##*:}"

"$BIN" produce --demo "$MEMBERS"

cat <<MSG

omnifold is serving gRPC on $GRPC, HTTP on $HTTP and metrics on $OPS,
with $MEMBERS demo members (m-000001 ... ).
Every call needs credentials; a development key with every scope is in
$DATA/dev.key (docs/security.md). Try, in another terminal:

  export OMNIFOLD_API_KEY=\$(cat $DATA/dev.key)
  $BIN profile get m-000001
  $BIN profile get m-000042 --fields purchases,channels
  $BIN points balance m-000001
  $BIN points redeem m-000001 --points 100 --request-id demo-1 --channel MOBILE_APP
  $BIN points ledger m-000001 --limit 5
  $BIN profile watch m-000001
  curl -H "authorization: Bearer \$OMNIFOLD_API_KEY" http://$HTTP/v1/profiles/m-000001
  curl http://$OPS/metrics
  grpcurl -plaintext -H "authorization: Bearer \$OMNIFOLD_API_KEY" -d '{"member":{"memberId":"m-000001"}}' $GRPC omnifold.v1.ProfileService/GetProfile

Ctrl-C stops omnifold and the broker; data stays in $DATA/ for the next run.
MSG
wait "${pids[0]}"
