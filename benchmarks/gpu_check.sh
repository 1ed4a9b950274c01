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
# build the native extensions in place (csrc/cuda with nvcc for this GPU; csrc/cpu if a compiler works)
SQRET_CUDA_ARCHS="${SQRET_CUDA_ARCHS:-90}" "$PY" setup.py -q build_ext --inplace 2>&1 | tail -5
"$PY" -c "import sqret; [print(b) for b in sqret.backends()]"
"$PY" -m pytest -q -p no:cacheprovider tests/test_gpu.py tests/test_cuda.py 2>&1 | tee "$out/gpu_tests.log"
if command -v compute-sanitizer >/dev/null; then  # memory errors in the CUDA kernels, on a short run
    compute-sanitizer --tool memcheck "$PY" -m pytest -q -p no:cacheprovider tests/test_cuda.py \
        -k "encode or float_lut" 2>&1 | tail -20 | tee "$out/gpu_sanitizer.log" || true
fi
"$PY" -m pytest -q -p no:cacheprovider benchmarks/test_gpu_bench.py --benchmark-only \
    --benchmark-json="$out/gpu_bench.json"
"$PY" benchmarks/gpu_report.py "$out/gpu_bench.json" | tee "$out/gpu_bench.md"
# the per-shape default of soft_quantize (CUDA or Triton kernel), from the measurements above
"$PY" benchmarks/soft_policy.py "$out/gpu_bench.json" sqret/ops/soft_policy.json | tee "$out/soft_policy.md"
cp sqret/ops/soft_policy.json "$out/soft_policy.json"
