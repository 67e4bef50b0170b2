#!/usr/bin/env bash
# Makes sure PostgreSQL and Redis answer on 127.0.0.1, starting (or, as root on Debian,
# installing) them when they do not. NATS is not needed here: tests start their own servers.
set -euo pipefail

answers() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

wait_for() { # port name
  for _ in $(seq 1 60); do answers "$1" && return 0; sleep 0.5; done
  echo "$2 did not come up on 127.0.0.1:$1" >&2
  return 1
}

apt_install() {
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "installing $* with apt-get" >&2
    apt-get update -qq >&2 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >&2
  else
    echo "cannot install $*: install it, or run as root on Debian" >&2
    return 1
  fi
}

if ! answers 5432; then
  command -v pg_ctlcluster >/dev/null || apt_install postgresql
  version="$(ls /etc/postgresql | sort -V | tail -n 1)"
  echo "starting PostgreSQL $version" >&2
  pg_ctlcluster --skip-systemctl-redirect "$version" main start >&2 || true
  wait_for 5432 PostgreSQL
fi

if ! answers 6379; then
  command -v redis-server >/dev/null || apt_install redis-server
  echo "starting Redis" >&2
  mkdir -p /var/lib/redis /var/log/redis 2>/dev/null || true
  redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no \
    --dir /tmp --logfile /tmp/redis-ci.log >&2
  wait_for 6379 Redis
fi
