#!/usr/bin/env bash
# Fresh machine -> the test suite. Installs Debian's chromium, postgresql, orthanc and dicom3tools (as root) for the
# browser, audit-log and PACS tests, creates .venv, runs pytest.
# Locally the default run leaves out tests marked slow (< 5 minutes on 2 cores); with CI=true, or with any -m
# given, it runs what is asked (CI: everything).
set -euo pipefail
cd "$(dirname "$0")/.."
need_apt=0
[ -x /usr/bin/chromium ] || need_apt=1
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || need_apt=1
command -v Orthanc >/dev/null || need_apt=1
command -v dciodvfy >/dev/null || need_apt=1  # dicom3tools: validates the PACS tests' DICOM objects
if [ "$need_apt" = 1 ] && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium postgresql orthanc dicom3tools >/dev/null
  # Debian starts services on install; the tests start their own throwaway servers on loopback ports.
  (service orthanc stop || true) >/dev/null 2>&1
fi
bash scripts/setup.sh test
marker=()
if [ "${CI:-}" != "true" ] && [[ " $* " != *" -m "* ]]; then
  marker=(-m "not slow")
fi
.venv/bin/python -m pytest "${marker[@]}" "$@"
