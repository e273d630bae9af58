#!/usr/bin/env bash
# Fresh machine -> the whole test suite (installs Chromium for the browser tests when run as root).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x /usr/bin/chromium ] && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
fi
bash scripts/setup.sh test
.venv/bin/python -m pytest "$@"
