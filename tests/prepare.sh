#!/usr/bin/env bash
# What the test suite needs outside .venv, set up by `make test` (and so by .ci/run) on a fresh
# machine: Redis on 127.0.0.1:6379 (the service tests) and Debian's Chromium at /usr/bin/chromium
# (the dashboard test; Playwright never downloads a browser). Installs what is missing with apt-get
# when run as root; otherwise fails at once with the one command that fixes it.
set -euo pipefail

REDIS_HOST=127.0.0.1
REDIS_PORT=6379
CHROMIUM=/usr/bin/chromium

say() { echo "tests/prepare.sh: $*" >&2; }

# apt-get install PACKAGE..., or exit with the command to run when this user cannot.
apt_install() {
  if [ "$(id -u)" -ne 0 ]; then
    say "missing $*; install it, then run make test again:"
    say "    sudo apt-get update && sudo apt-get install -y $*"
    exit 1
  fi
  say "installing $* (apt-get)"
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@") >&2
}

# PING over bash's /dev/tcp: needs neither redis-cli nor Python.
redis_answers() {
  local reply=""
  { exec 3<>"/dev/tcp/$REDIS_HOST/$REDIS_PORT"; } 2>/dev/null || return 1
  printf 'PING\r\n' >&3
  read -r -t 2 reply <&3 || true
  exec 3<&- 3>&-
  [ "${reply%$'\r'}" = "+PONG" ]
}

if ! redis_answers; then
  command -v redis-server >/dev/null || apt_install redis-server
  # No persistence: the tests never rely on data surviving a Redis restart (those that do start
  # their own Redis on a free port).
  dir="${TMPDIR:-/tmp}/spar-test-redis"
  mkdir -p "$dir"
  say "starting redis-server on $REDIS_HOST:$REDIS_PORT (log: $dir/redis.log)"
  redis-server --daemonize yes --bind "$REDIS_HOST" --port "$REDIS_PORT" --save "" --appendonly no \
    --dir "$dir" --logfile "$dir/redis.log"
  for _ in $(seq 1 50); do
    redis_answers && break
    sleep 0.2
  done
  redis_answers || { say "redis-server did not answer on $REDIS_HOST:$REDIS_PORT; see $dir/redis.log"; exit 1; }
fi

if [ ! -x "$CHROMIUM" ]; then
  apt_install chromium
  [ -x "$CHROMIUM" ] || { say "apt-get installed chromium but $CHROMIUM is missing"; exit 1; }
fi
