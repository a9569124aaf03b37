#!/usr/bin/env bash
# Every GPU path in one command on a lent device (benchmarks/gpu_check.py says what it checks).
#   bash benchmarks/gpu_check.sh [--dry-run] [--out FILE] [--work DIR]
# Builds the virtual environment when missing (make venv), then runs the checks with it.
set -uo pipefail
cd "$(dirname "$0")/.."
if [ ! -x .venv/bin/python ]; then
    make venv || exit 1
fi
exec .venv/bin/python benchmarks/gpu_check.py "$@"
