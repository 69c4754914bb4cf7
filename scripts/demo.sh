#!/usr/bin/env bash
# Installs mpt and runs the demo in a namespace lab on this machine (root).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
exec .venv/bin/python -m mpt.lab.demo "$@"
