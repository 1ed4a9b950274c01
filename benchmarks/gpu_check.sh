#!/usr/bin/env bash
# One 10-minute window on one GPU machine, with that machine's own Python, torch and triton (no downloads):
# build, the GPU tests (compiled kernels, never the interpreter), a time-boxed compute-sanitizer pass, the
# kernel benchmarks, a short CIFAR-10 SPQ training (bf16) with its mAP@1000. Every phase has its own time
# budget (a slow phase cannot eat the rest); a phase that fails or runs out is recorded and the next runs.
# Results: ${OUT:-benchmarks/results}/ (phases.tsv, gpu_tests.log, gpu_bench.{json,md}, soft_policy.*, train.*).
#
#   bash benchmarks/gpu_check.sh            run it (on the GPU machine)
#   bash benchmarks/gpu_check.sh --dry-run  prove every step resolves, here, on the CPU (CI runs this)
# Through the device tool: mkdir -p .gpu_data && cp ../shared/data/cifar10-jpeg.tar.gz .gpu_data/, then
# run "bash benchmarks/gpu_check.sh" with carry [".gpu_data"] and OUT set by the tool.
set -uo pipefail
cd "$(dirname "$0")/.."
DRY=0
[ "${1:-}" = "--dry-run" ] && DRY=1
out="${OUT:-benchmarks/results}"
mkdir -p "$out"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
unset TRITON_INTERPRET  # the compiled kernels; tests/conftest.py turns the interpreter on only without a GPU
PY="${PYTHON:-python3}"
DATA="${SQRET_DATA:-$PWD/../shared/data}"  # on the device machine: a carried copy (.gpu_data/, git-ignored)
[ -d .gpu_data ] && [ -z "${SQRET_DATA:-}" ] && DATA="$PWD/.gpu_data"
WINDOW=600  # seconds: the whole run must fit, with a margin for the machine's start-up of Python
TOTAL=0
status=0

# name budget_seconds command...
phase() {
    local name=$1 budget=$2
    shift 2
    TOTAL=$((TOTAL + budget))
    if [ $DRY = 1 ]; then
        printf 'phase %-10s %4ss  %s\n' "$name" "$budget" "$*"
        return 0
    fi
    local t0=$SECONDS rc
    echo "== $name (budget ${budget}s)"
    timeout --signal=TERM --kill-after=10 "$budget" "$@"
    rc=$?
    [ $rc = 124 ] && echo "== $name: out of time after ${budget}s"
    printf '%s\t%s\t%s\t%s\n' "$name" "$rc" "$((SECONDS - t0))" "$budget" >>"$out/phases.tsv"
    [ $rc = 0 ] || status=1
    return 0
}

build() {
    SQRET_CUDA_ARCHS="${SQRET_CUDA_ARCHS:-90}" "$PY" setup.py -q build_ext --inplace 2>&1 | tail -5
    "$PY" -c "import sqret; [print(b) for b in sqret.backends()]"
}
gpu_tests() {
    "$PY" -m pytest -q -p no:cacheprovider tests/test_gpu.py tests/test_cuda.py 2>&1 | tee "$out/gpu_tests.log"
}
sanitizer() {
    if ! command -v compute-sanitizer >/dev/null; then echo "compute-sanitizer not found: skipped"; return 0; fi
    compute-sanitizer --tool memcheck --error-exitcode 3 "$PY" -m pytest -q -p no:cacheprovider tests/test_cuda.py \
        -k "encode or float_lut" 2>&1 | tail -20 | tee "$out/gpu_sanitizer.log"
}
bench() {
    "$PY" -m pytest -q -p no:cacheprovider benchmarks/test_gpu_bench.py --benchmark-only \
        --benchmark-json="$out/gpu_bench.json" &&
        "$PY" benchmarks/gpu_report.py "$out/gpu_bench.json" | tee "$out/gpu_bench.md" &&
        "$PY" benchmarks/soft_policy.py "$out/gpu_bench.json" "$out/soft_policy.json" | tee "$out/soft_policy.md"
}
train() {
    if [ ! -f "$DATA/cifar10-jpeg.tar.gz" ]; then
        echo "CIFAR-10 not found under $DATA (set SQRET_DATA): training skipped"; return 0
    fi
    "$PY" -m sqret train --method spq --dataset cifar10 --data "$DATA" --bits 32 --epochs 3 --train-size 10000 \
        --device cuda --log "$out/train.jsonl" 2>&1 | tee "$out/train.log"
}

nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null || true
[ $DRY = 1 ] || : >"$out/phases.tsv"
phase build 90 build
phase tests 170 gpu_tests
phase sanitizer 60 sanitizer
phase bench 180 bench
phase train 80 train

if [ $DRY = 1 ]; then  # every step resolves: files, collection, environment, budgets
    fail() { echo "dry run: $*"; exit 1; }
    for f in setup.py tests/test_gpu.py tests/test_cuda.py benchmarks/test_gpu_bench.py benchmarks/gpu_report.py \
        benchmarks/soft_policy.py; do
        [ -f "$f" ] || fail "missing $f"
    done
    [ $TOTAL -le $((WINDOW - 20)) ] || fail "the phase budgets add up to ${TOTAL}s, over the ${WINDOW}s window"
    "$PY" -c "import os, sys; sys.exit('TRITON_INTERPRET' in os.environ)" ||
        fail "TRITON_INTERPRET reaches the children"
    "$PY" -m pytest -q -p no:cacheprovider --collect-only tests/test_gpu.py tests/test_cuda.py \
        benchmarks/test_gpu_bench.py >"$out/dry_collect.log" 2>&1 || { cat "$out/dry_collect.log"; fail "collection"; }
    n=$(grep -cE "::" "$out/dry_collect.log" || true)
    [ "$n" -gt 0 ] || fail "no GPU test collected"
    "$PY" -m sqret train --help >/dev/null || fail "sqret train does not resolve"
    "$PY" -m py_compile benchmarks/gpu_report.py benchmarks/soft_policy.py || fail "report scripts"
    echo "dry run: ok ($n GPU tests and benchmarks collected; budgets ${TOTAL}s of ${WINDOW}s)"
    exit 0
fi
echo "phases (name, rc, seconds, budget):"
cat "$out/phases.tsv"
exit $status
