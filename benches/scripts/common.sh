# Shared by the scripts beside it (sourced, not run): a fresh tansu on
# $PORT with 100,000 events of 5,000 members on the events topic, and
# `omnifold serve` started and stopped on one store. Expects $PORT set.
B=${OMNIFOLD_RELEASE_DIR:-$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)/target/release}
work=$(mktemp -d)
cleanup() { kill "${serve:-}" "${tansu:-}" 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT
export OMNIFOLD_BROKERS=127.0.0.1:$PORT OMNIFOLD_KAFKA__INTERNAL_SECRET=$("$B/omnifold" secret)
# Served with authentication on, as in production: one key with every scope,
# which omnifold-load sends (binaries from before `[auth]` cannot be compared).
"$B/omnifold" keys new --name bench --scopes all --file "$work/keys.toml" >"$work/key" 2>/dev/null
export OMNIFOLD_AUTH__KEYS_FILE=$work/keys.toml OMNIFOLD_API_KEY=$(cat "$work/key")
ticks() { awk '{print $14+$15}' "/proc/$1/stat"; }   # user+system CPU, 1/100 s
cents() { awk -v t="$1" 'BEGIN { printf "%.2f", t / 100 }'; }
# Waits up to 30 s for a command to succeed, else stops with the logs.
wait_for() {
  for _ in $(seq 150); do "$@" >/dev/null 2>&1 && return; sleep 0.2; done
  echo "gave up waiting for: $*" >&2; cat "$work"/*.log >&2; exit 1
}
# Starts tansu (memory storage) with omnifold's topics; sets $tansu.
start_tansu() {
  tansu broker --listener-url "tcp://127.0.0.1:$PORT" --advertised-listener-url "tcp://127.0.0.1:$PORT" \
    --storage-engine memory://tansu/ >"$work/tansu.log" 2>&1 &
  tansu=$!
  wait_for "$B/omnifold" topics create --partitions 4
}
# Starts tansu and produces the events.
start_tansu_with_events() {
  echo "starting tansu on :$PORT and producing ${EVENTS:-100000} events of 5,000 members" >&2
  start_tansu
  "$B/omnifold-produce" --file "$work/events.jsonl" --count "${EVENTS:-100000}" --members 5000 >/dev/null
  "$B/omnifold" produce --file "$work/events.jsonl" >/dev/null
}
# `$1 serve` on the one store; sets $serve and $addr.
start_serve() {
  "$1" serve --data-dir "$work/data" --listen 127.0.0.1:0 >"$work/serve.out" 2>"$work/serve.log" &
  serve=$!
  wait_for grep -q "serving gRPC on" "$work/serve.out"
  addr=$(sed -n 's/.*serving gRPC on //p' "$work/serve.out")
}
stop_serve() { kill "$serve"; wait "$serve" 2>/dev/null || true; }
# A redemption is decided once ingest has reached it: then every event is in.
# A fresh instance answers UNAVAILABLE until it has folded what the
# partitions held when it was assigned them (docs/scale-out.md): ask again.
wait_caught_up() {
  wait_for "$B/omnifold-load" --addr "$addr" --target redeem --concurrency 1 --seconds "$1" --members 5000
}
# One measured round against the serve at $addr: 1 s of warm-up, then 5 s
# of `omnifold-load --target $TARGET` at $CONCURRENCY; prints "$1: " and
# the load report with the CPU serve used.
measure() {
  "$B/omnifold-load" --addr "$addr" --target "$TARGET" --concurrency "$CONCURRENCY" --seconds 1 --members 5000 >/dev/null
  local s0 r
  s0=$(ticks "$serve")
  r=$("$B/omnifold-load" --addr "$addr" --target "$TARGET" --concurrency "$CONCURRENCY" --seconds 5 --members 5000)
  echo "$1: $r serve_cpu_s=$(cents $(( $(ticks "$serve") - s0 )))"
}

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

# Records folded so far, summed over the partitions.
folded() {
  "$B/omnifold" status --server "http://$addr" --json 2>/dev/null \
    | grep -o '"nextOffset": *"[0-9]*"' | grep -o '[0-9]*' | awk '{ s += $1 } END { print s + 0 }'
}

# One fold of every event by a fresh serve (a fresh store; set a fresh
# OMNIFOLD_KAFKA__GROUP_ID first): prints "$1: ... folded in ... s" with
# the events per second and serve's CPU.
fold_round() {
  rm -rf "$work/data"
  local started took
  started=$(date +%s.%N)
  start_serve "$B/omnifold"
  for _ in $(seq 6000); do [ "$(folded || true)" -ge "$EVENTS" ] 2>/dev/null && break; sleep 0.05; done
  took=$(awk -v a="$started" -v b="$(date +%s.%N)" 'BEGIN { printf "%.2f", b - a }')
  echo "$1: $EVENTS events folded in ${took} s ($(awk -v t="$took" -v n="$EVENTS" 'BEGIN { printf "%.0f", n / t }') events/s), serve_cpu_s=$(cents "$(ticks "$serve")")"
  stop_serve
}
