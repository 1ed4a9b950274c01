# make demo / make test create .venv from nothing (pinned requirements.txt), install sqret, and run.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.sqret-installed
NATIVE := $(wildcard csrc/*/*.cpp csrc/*/*.h csrc/*/*.cu csrc/*/*.cuh)

.PHONY: demo test lint gpu-static bench bench-index bench-billion bench-frontier clean

$(STAMP): requirements.txt setup.py $(NATIVE)
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --disable-pip-version-check -r requirements.txt
	$(BIN)/python -m pip install -q --disable-pip-version-check --no-build-isolation --no-deps -e .
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/python -m sqret demo

lint: $(STAMP)
	$(BIN)/ruff check .

test: lint
	$(BIN)/python -m pytest -q tests
	$(MAKE) --no-print-directory gpu-static

# Every Triton kernel compiled for sm_80 / sm_90 (and sm_100) without a GPU, csrc/cuda through nvcc -Xptxas -v:
# a compile failure, a spill in any soft-kernel configuration or a hot one of the others, or shared memory over
# a limit fails (gpu_static.py).
gpu-static: $(STAMP)
	$(BIN)/python benchmarks/gpu_static.py

bench: $(STAMP)
	$(BIN)/python -m pytest -q benchmarks/test_cpu_scan.py --benchmark-only \
		--benchmark-json=benchmarks/results/cpu_scan.json
	$(BIN)/python benchmarks/report.py benchmarks/results/cpu_scan.json > benchmarks/results/cpu_scan.md
	cat benchmarks/results/cpu_scan.md

bench-index: $(STAMP)
	$(BIN)/python -m pytest -q benchmarks/test_index_vs_faiss.py --benchmark-only \
		--benchmark-json=benchmarks/results/index_vs_faiss.json
	cd benchmarks && ../$(BIN)/python index_report.py results/index_vs_faiss.json \
		results/index_vs_faiss.md results/index_vs_faiss.png
	cat benchmarks/results/index_vs_faiss.md

# ScaNN: a benchmark-only dependency (benchmarks/requirements-scann.txt), installed without its TensorFlow.
bench-frontier: $(STAMP)
	$(BIN)/python -m pip install -q --disable-pip-version-check --no-deps -r benchmarks/requirements-scann.txt
	$(BIN)/python benchmarks/frontier.py $(FRONTIER_ARGS)
	$(BIN)/python benchmarks/frontier_report.py
	cat benchmarks/results/frontier.md

bench-billion: $(STAMP)
	$(BIN)/python benchmarks/billion.py

clean:
	rm -rf $(VENV) build *.egg-info sqret/*.so
