#!/usr/bin/env bash
# The test command: installs what the tests need, then runs the whole workspace's tests.
# Tests start their own nats-server per test on free ports and create their own PostgreSQL
# databases, so they run in parallel and leave nothing behind.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

NATS_SERVER_BIN="$(bash scripts/ensure-nats.sh)"
export NATS_SERVER_BIN
bash scripts/ensure-services.sh
export DATABASE_URL="${DATABASE_URL:-postgres://postgres@127.0.0.1:5432/postgres}"
export REDIS_URL="${REDIS_URL:-redis://127.0.0.1:6379}"

# gateway-socketio's end-to-end tests drive the real socket.io-client (Node.js 20+).
client="services/gateway-socketio/tests/client"
if { ! command -v node >/dev/null || ! command -v npm >/dev/null; } && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  echo "installing Node.js and npm (Debian packages) for $client" >&2
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q nodejs npm >&2 \
    || { apt-get update -q >&2 && DEBIAN_FRONTEND=noninteractive apt-get install -y -q nodejs npm >&2; }
fi
if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
  echo "node and npm are required by $client (the gateway-socketio tests): install Node.js 18+" >&2
  exit 1
fi
if [ ! -d "$client/node_modules" ] || [ "$client/package-lock.json" -nt "$client/node_modules/.package-lock.json" ]; then
  echo "installing the Socket.IO test client: npm ci in $client" >&2
  (cd "$client" && npm ci --no-audit --no-fund >&2)
fi

if cargo nextest --version >/dev/null 2>&1; then
  exec cargo nextest run --workspace --no-fail-fast "$@"
else
  exec cargo test --workspace --no-fail-fast "$@"
fi
