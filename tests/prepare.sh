#!/usr/bin/env bash
# What the test suite needs outside .venv, set up by `make test` (and so by .ci/run) on a fresh
# machine: redis-server (each service test starts its own on a free port) and Debian's Chromium at /usr/bin/chromium
# (the dashboard test; Playwright never downloads a browser). Installs what is missing with apt-get
# when run as root; otherwise fails at once with the one command that fixes it.
set -euo pipefail

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

# Every test starts its own redis-server on a free loopback port (tests/service_harness.py): only
# the binary is needed, never a shared server (no test may flush a Redis it did not start).
command -v redis-server >/dev/null || apt_install redis-server

if [ ! -x "$CHROMIUM" ]; then
  apt_install chromium
  [ -x "$CHROMIUM" ] || { say "apt-get installed chromium but $CHROMIUM is missing"; exit 1; }
fi
