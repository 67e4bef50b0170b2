#!/usr/bin/env bash
# Runs the whole platform locally: a NATS >= 2.10 with JetStream and PostgreSQL (started if
# they are not already answering), then all five services. Ctrl-C stops everything.
#
#   NATS_URL      use this NATS instead of starting one (must be >= 2.10 with JetStream)
#   DATABASE_URL  use this PostgreSQL database (default: database "platform" on 127.0.0.1)
#   PROFILE       cargo profile to build (default: dev)
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
state="$root/.tools/dev"
mkdir -p "$state/logs"

bash scripts/ensure-services.sh

# NATS: reuse a modern server when one is given, otherwise start the PyPI build on 14222
# (4222 may hold an older distribution server that lacks the key-value API).
if [ -z "${NATS_URL:-}" ]; then
  nats_bin="$(bash scripts/ensure-nats.sh)"
  NATS_URL="nats://127.0.0.1:14222"
  if ! (exec 3<>/dev/tcp/127.0.0.1/14222) 2>/dev/null; then
    echo "starting nats-server on 127.0.0.1:14222 (store: $state/nats)"
    "$nats_bin" -a 127.0.0.1 -p 14222 -js -sd "$state/nats" -m 18222 >"$state/logs/nats.log" 2>&1 &
    echo $! >"$state/nats.pid"
  fi
fi
export NATS_URL

admin_url="postgres://postgres@127.0.0.1:5432/postgres"
if [ -z "${DATABASE_URL:-}" ]; then
  DATABASE_URL="postgres://postgres@127.0.0.1:5432/platform"
  psql "$admin_url" -tAc "SELECT 1 FROM pg_database WHERE datname = 'platform'" | grep -q 1 \
    || psql "$admin_url" -qc "CREATE DATABASE platform"
fi

profile="${PROFILE:-dev}"
cargo build --profile "$profile" --bins
bin_dir="target/$([ "$profile" = dev ] && echo debug || echo "$profile")"

pids=()
stop() {
  trap - INT TERM EXIT
  echo "stopping..."
  kill -TERM "${pids[@]}" 2>/dev/null || true
  wait "${pids[@]}" 2>/dev/null || true
  if [ -f "$state/nats.pid" ]; then kill "$(cat "$state/nats.pid")" 2>/dev/null || true; rm -f "$state/nats.pid"; fi
}
trap stop INT TERM EXIT

start() { # name prefix port
  local name=$1 prefix=$2 port=$3
  env "${prefix}HTTP__LISTEN=127.0.0.1:$port" "${prefix}NATS__URL=$NATS_URL" \
      "${prefix}DATABASE__URL=$DATABASE_URL" "${prefix}LOG__FORMAT=json" \
      "$bin_dir/$name" >"$state/logs/$name.log" 2>&1 &
  pids+=($!)
  printf '  %-20s http://127.0.0.1:%s  (log: .tools/dev/logs/%s.log)\n' "$name" "$port" "$name"
}

echo "NATS: $NATS_URL  PostgreSQL: $DATABASE_URL"
# Development-only credentials for gateway-socketio (/admin HS256 tokens, widget-key API).
export GATEWAY_SOCKETIO_ADMIN__SECRET="${GATEWAY_SOCKETIO_ADMIN__SECRET:-dev-only-insecure-hs256-secret}"
export GATEWAY_SOCKETIO_API__KEYS="${GATEWAY_SOCKETIO_API__KEYS:-[dev-only-widget-api-key]}"
start gateway-ws GATEWAY_WS_ 8080
start gateway-socketio GATEWAY_SOCKETIO_ 8081
start webhook-dispatcher WEBHOOK_DISPATCHER_ 8082
start integrations-runner INTEGRATIONS_RUNNER_ 8083
start stat-aggregator STAT_AGGREGATOR_ 8084

for port in 8080 8081 8082 8083 8084; do
  for _ in $(seq 1 100); do
    curl -fsS "http://127.0.0.1:$port/readyz" >/dev/null 2>&1 && break
    sleep 0.2
  done
done
echo "ready. publish an event:  NATS_URL=$NATS_URL $bin_dir/eventctl publish order.status_changed --entity 101 --data '{\"status\":\"paid\"}'"
echo "Ctrl-C stops everything."
wait -n "${pids[@]}" || true
