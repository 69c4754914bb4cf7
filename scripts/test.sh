#!/usr/bin/env bash
# Installs mpt and runs the whole test suite (unit + namespace end-to-end; root).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
exec .venv/bin/python -m pytest -v tests "$@"
