#!/usr/bin/env bash
# Fresh machine -> trained, tested demo model in runs/demo (data: $CXRDX_DATA or ../shared/data/cxr3).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/cxrdx demo "$@"
