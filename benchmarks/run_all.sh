#!/usr/bin/env bash
# Reproduces every CPU figure of benchmarks/README.md; `make bench` runs it. About 12 minutes on
# 2 idle cores. THREADS: torch threads (2 = the machine; use 1 when another job holds a core,
# since 2 OpenMP threads on a shared core run many times slower). Results: $OUT/*.json and *.log.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
THREADS=${THREADS:-2}
OUT=${OUT:-benchmarks/results}
mkdir -p "$OUT"
run() {  # name, command...: tee the output to $OUT/name.log, print the wall time
    local name=$1; shift
    local t0=$SECONDS
    echo "== $name: $*"
    "$@" 2>&1 | grep --line-buffered -v -e "LeafSpec" -e "warnings.warn" | tee "$OUT/$name.log"
    echo "== $name: $((SECONDS - t0)) s"
}
run step_vs_reference $PY benchmarks/step_vs_reference.py --threads "$THREADS" --json "$OUT/step_vs_reference.json"
run input_pipeline $PY benchmarks/input_pipeline.py --threads "$THREADS" --json "$OUT/input_pipeline.json"
run linear_probe $PY benchmarks/linear_probe.py --threads "$THREADS" --json "$OUT/linear_probe.json"
run ingest_scaling $PY benchmarks/ingest_scaling.py --ns 8 16 32 64 --repeats 3
run gpu_smoke $PY benchmarks/gpu_throughput.py --device cpu --tiny --methods barlowtwins --json "$OUT/gpu_smoke.json"
run profiles $PY benchmarks/profile_step.py --threads "$THREADS" --method ae barlowtwins-8192 --data
