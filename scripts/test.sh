#!/usr/bin/env bash
# Fresh machine -> the whole test suite (installs Chromium for the browser tests when run as root).
set -euo pipefail
cd "$(dirname "$0")/.."
# Debian's chromium (browser tests) and postgresql (audit-log test against a real PostgreSQL)
if { [ ! -x /usr/bin/chromium ] || ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; } \
   && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium postgresql >/dev/null
fi
bash scripts/setup.sh test
.venv/bin/python -m pytest "$@"
