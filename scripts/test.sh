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

if cargo nextest --version >/dev/null 2>&1; then
  exec cargo nextest run --workspace --no-fail-fast "$@"
else
  exec cargo test --workspace --no-fail-fast "$@"
fi
