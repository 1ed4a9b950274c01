#!/usr/bin/env bash
# One go on a GPU machine: the GPU tests, then the GPU benchmarks, results (JSON + markdown) in
# ${OUT:-benchmarks/results}. Uses the machine's own Python with torch and triton (no downloads needed);
# the native CPU extension is not required.  Usage: bash benchmarks/gpu_check.sh
set -euo pipefail
cd "$(dirname "$0")/.."
out="${OUT:-benchmarks/results}"
mkdir -p "$out"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
unset TRITON_INTERPRET
PY="${PYTHON:-python3}"
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader || true
"$PY" -m pytest -q -p no:cacheprovider tests/test_gpu.py 2>&1 | tee "$out/gpu_tests.log"
"$PY" -m pytest -q -p no:cacheprovider benchmarks/test_gpu_bench.py --benchmark-only \
    --benchmark-json="$out/gpu_bench.json"
"$PY" benchmarks/gpu_report.py "$out/gpu_bench.json" | tee "$out/gpu_bench.md"
