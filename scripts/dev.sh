#!/usr/bin/env bash
# Runs the whole platform locally: a NATS >= 2.10 with JetStream and PostgreSQL (started if
# they are not already answering), then all five services with development credentials.
# Prints what to do next once every service is ready; Ctrl-C (or SIGTERM) stops everything.
#
# Exit status: 0 after a clean stop; 1 when a service exits, is not ready in time, or stops
# with an error (the script says which, with the last line of its log).
#
#   NATS_URL           use this NATS instead of starting one (must be >= 2.10 with JetStream)
#   PG_SERVER_URL      PostgreSQL server, without a database (default: postgres://postgres@127.0.0.1:5432);
#                      each stateful service gets its own database dev_<service> there
#   PROFILE            cargo profile to build (default: dev)
#   CARGO_TARGET_DIR   honoured, like every cargo setting
#   DEV_READY_TIMEOUT  seconds each service may take to become ready (default: 60)
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
state="$root/.tools/dev"
mkdir -p "$state/logs"

bash scripts/ensure-services.sh

# Development-only credentials: generated once, reused, git-ignored (.tools/).
creds="$state/credentials.env"
python3 scripts/devcreds.py init "$creds"
# shellcheck disable=SC1090
source "$creds"

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

# One database per service that keeps state: each runs its own sqlx migrations, and their
# `_sqlx_migrations` tables must not meet. gateway-ws's is where the (here simulated) host
# application keeps its express-session table.
pg_server="${PG_SERVER_URL:-postgres://postgres@127.0.0.1:5432}"
for db in dev_gateway_ws dev_gateway_socketio dev_webhook_dispatcher dev_integrations_runner; do
  psql "$pg_server/postgres" -tAc "SELECT 1 FROM pg_database WHERE datname = '$db'" | grep -q 1 \
    || psql "$pg_server/postgres" -qc "CREATE DATABASE $db"
done

# gateway-ws reads the host application's express-session store. In development there is no
# host application, so keep connect-pg-simple's table here and one long-lived session in it.
dev_sid="dev-session-$(printf '%s' "$DEV_SESSION_SECRET" | sha256sum | cut -c1-16)"
psql "$pg_server/dev_gateway_ws" -q -v ON_ERROR_STOP=1 >/dev/null <<SQL
CREATE TABLE IF NOT EXISTS "session" ("sid" varchar NOT NULL COLLATE "default" PRIMARY KEY,
  "sess" json NOT NULL, "expire" timestamp(6) NOT NULL);
CREATE INDEX IF NOT EXISTS "IDX_session_expire" ON "session" ("expire");
INSERT INTO "session" (sid, sess, expire)
  VALUES ('$dev_sid', '{"cookie":{"originalMaxAge":null,"httpOnly":true,"path":"/"},"userId":"dev-user"}',
          now() + interval '30 days')
  ON CONFLICT (sid) DO UPDATE SET sess = EXCLUDED.sess, expire = EXCLUDED.expire;
SQL

profile="${PROFILE:-dev}"
cargo build --profile "$profile" --bins
target_dir="$(cargo metadata --format-version 1 --no-deps \
  | python3 -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])')"
bin_dir="$target_dir/$([ "$profile" = dev ] && echo debug || echo "$profile")"

names=() pids=() ports=()
stopping=0
last_log_line() { tail -n 1 "$state/logs/$1.log" 2>/dev/null | cut -c1-400; }

# Stops every service (SIGTERM, then waits for each) and NATS if this script started it.
# Returns non-zero when a service had already died or stopped with an error.
stop_all() {
  local failed=0 i rc
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for i in "${!pids[@]}"; do
    rc=0
    wait "${pids[$i]}" 2>/dev/null || rc=$?
    if [ "$rc" -ne 0 ]; then
      echo "  ${names[$i]} exited with status $rc: $(last_log_line "${names[$i]}")" >&2
      failed=1
    fi
  done
  if [ -f "$state/nats.pid" ]; then
    local nats_pid
    nats_pid="$(cat "$state/nats.pid")"
    kill "$nats_pid" 2>/dev/null || true
    wait "$nats_pid" 2>/dev/null || true   # our child: gone once this returns
    rm -f "$state/nats.pid"
  fi
  return "$failed"
}

on_signal() {
  trap - INT TERM
  stopping=1
  echo "stopping..."
  if stop_all; then
    echo "stopped cleanly."
    exit 0
  fi
  exit 1
}
trap on_signal INT TERM

fail() { # message: stop what runs, exit 1
  trap - INT TERM
  echo "dev.sh: $1" >&2
  stop_all || true
  exit 1
}

start() { # name prefix port [NAME=value ...]
  local name=$1 prefix=$2 port=$3
  shift 3
  env "${prefix}HTTP__LISTEN=127.0.0.1:$port" "${prefix}NATS__URL=$NATS_URL" \
      "${prefix}LOG__FORMAT=json" "$@" \
      "$bin_dir/$name" >"$state/logs/$name.log" 2>&1 &
  names+=("$name") pids+=($!) ports+=("$port")
}

echo "NATS: $NATS_URL  PostgreSQL: $pg_server"
start gateway-ws GATEWAY_WS_ 8080 \
  "GATEWAY_WS_DATABASE__URL=$pg_server/dev_gateway_ws" \
  "GATEWAY_WS_SESSION__SECRETS=[$DEV_SESSION_SECRET]"
start gateway-socketio GATEWAY_SOCKETIO_ 8081 \
  "GATEWAY_SOCKETIO_DATABASE__URL=$pg_server/dev_gateway_socketio" \
  "GATEWAY_SOCKETIO_ADMIN__SECRET=$DEV_ADMIN_JWT_SECRET" \
  "GATEWAY_SOCKETIO_API__KEYS=[$DEV_WIDGET_API_KEY]"
# Loopback receivers are allowed in development only (production refuses private networks).
start webhook-dispatcher WEBHOOK_DISPATCHER_ 8082 \
  "WEBHOOK_DISPATCHER_DATABASE__URL=$pg_server/dev_webhook_dispatcher" \
  "WEBHOOK_DISPATCHER_API__KEYS=[$DEV_WEBHOOK_API_KEY]" \
  "WEBHOOK_DISPATCHER_API__JWT_HS256_SECRET=$DEV_ADMIN_JWT_SECRET" \
  "WEBHOOK_DISPATCHER_DELIVERY__ALLOW_NETWORKS=[127.0.0.0/8, ::1/128]"
start integrations-runner INTEGRATIONS_RUNNER_ 8083 \
  "INTEGRATIONS_RUNNER_DATABASE__URL=$pg_server/dev_integrations_runner" \
  "INTEGRATIONS_RUNNER_API__KEYS=[$DEV_INTEGRATIONS_API_KEY]" \
  "INTEGRATIONS_RUNNER_CRYPTO__KEYS=[{id = \"dev\", key = \"$DEV_INTEGRATIONS_CRYPTO_KEY\"}]" \
  "INTEGRATIONS_RUNNER_EXECUTION__ALLOW_NETWORKS=[127.0.0.0/8, ::1/128]"
start stat-aggregator STAT_AGGREGATOR_ 8084

# Ready means /readyz answers 200. A service that exits, or is not ready in time, fails the
# whole run with its name and the last line of its log.
deadline=$(( $(date +%s) + ${DEV_READY_TIMEOUT:-60} ))
for i in "${!names[@]}"; do
  name=${names[$i]} port=${ports[$i]}
  until curl -fsS -o /dev/null "http://127.0.0.1:$port/readyz" 2>/dev/null; do
    if ! kill -0 "${pids[$i]}" 2>/dev/null; then
      fail "$name exited before it was ready: $(last_log_line "$name")"
    fi
    if [ "$(date +%s)" -ge "$deadline" ]; then
      why="$(curl -sS "http://127.0.0.1:$port/readyz" 2>&1 | cut -c1-300 || true)"
      fail "$name not ready after ${DEV_READY_TIMEOUT:-60}s (/readyz: $why); last log line: $(last_log_line "$name")"
    fi
    sleep 0.2
  done
  printf '  %-20s ready  http://127.0.0.1:%s  (log: .tools/dev/logs/%s.log)\n' "$name" "$port" "$name"
done

admin_jwt="$(python3 scripts/devcreds.py jwt "$DEV_ADMIN_JWT_SECRET" dev-admin)"
dev_cookie="connect.sid=$(python3 scripts/devcreds.py cookie "$DEV_SESSION_SECRET" "$dev_sid")"
cat <<EOF

ready: all five services answer /readyz.

Development credentials (kept in .tools/dev/credentials.env, reused on every run):
  webhook API key:      $DEV_WEBHOOK_API_KEY
  integrations API key: $DEV_INTEGRATIONS_API_KEY
  widget-keys API key:  $DEV_WIDGET_API_KEY
  /admin JWT (30 days): $admin_jwt
     mint another:      python3 scripts/devcreds.py jwt "\$DEV_ADMIN_JWT_SECRET" <sub> [ttl-secs]
  /ws session cookie:   $dev_cookie
     (user "dev-user", a row in the "session" table of $pg_server/dev_gateway_ws, as connect-pg-simple
      keeps it; sign another sid with: python3 scripts/devcreds.py cookie "\$DEV_SESSION_SECRET" <sid>)

Try it:
  # 1. a webhook subscription (receiver: any HTTP server on localhost, e.g. python3 -m http.server 9000)
  curl -sS -X POST http://127.0.0.1:8082/crm/webhook-subscriptions \\
    -H 'Authorization: Bearer $DEV_WEBHOOK_API_KEY' -H 'content-type: application/json' \\
    -d '{"url": "http://localhost:9000/hook", "event_types": ["order.*"]}'
  # 2. publish an event
  NATS_URL=$NATS_URL $bin_dir/eventctl publish order.status_changed --entity 101 \\
    --data '{"id": 101, "status": "paid"}' --changed-fields '{"status": "paid"}'
  # 3. watch it arrive: on the bus, and in a webhook attempt
  NATS_URL=$NATS_URL $bin_dir/eventctl tail 'events.order.>' --json
  curl -sS -H 'Authorization: Bearer $DEV_WEBHOOK_API_KEY' 'http://127.0.0.1:8082/crm/webhook-subscriptions/<id>/deliveries'
  # on /ws: connect ws://127.0.0.1:8080/ws with the cookie above, send {"type":"subscribe","channel":"order_changes"}

Ctrl-C stops everything.
EOF

# Running: a service that exits on its own is a failure.
while :; do
  rc=0
  wait -n "${pids[@]}" || rc=$?
  [ "$stopping" = 1 ] && break
  for i in "${!pids[@]}"; do
    if ! kill -0 "${pids[$i]}" 2>/dev/null; then
      fail "${names[$i]} exited (status $rc): $(last_log_line "${names[$i]}")"
    fi
  done
done
