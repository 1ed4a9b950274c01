"""Shared fixtures for the benchmark suites: datasets encoded once per session, the same codes for every
system (copied into FAISS), threads fixed for all."""

import os
from pathlib import Path

import numpy as np
import pytest
import torch

DATA = Path(os.environ.get("SQRET_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
THREADS = int(os.environ.get("SQRET_BENCH_THREADS", os.cpu_count() or 1))
# alternating windows per library for the short cases (this VM's CPUs slow down by up to 1.6x for stretches of
# milliseconds): the reports keep each library's best
REPEATS = 3


MAIN_CPU: dict[str, object] = {}  # where the main thread was pinned, for the results


def _pin_main_thread() -> None:
    """Pin the main thread (only it) to the fastest CPU it may use. CPUs of a VM can differ in speed (this
    machine's two vCPUs by up to 1.6x), and which one the scheduler gave each case decided the single-query
    ratios; pinned, every case of both libraries runs its serial part on the same CPU. Worker threads, made
    before (the OpenMP pools are warmed first), stay free."""
    import time

    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2 or os.environ.get("SQRET_BENCH_PIN", "1") == "0":
        return
    speed = {}
    for _ in range(3):
        for c in cpus:
            os.sched_setaffinity(0, {c})
            t = time.perf_counter()
            sum(range(200_000))
            speed[c] = min(speed.get(c, float("inf")), time.perf_counter() - t)
    best = min(speed, key=speed.get)
    os.sched_setaffinity(0, {best})
    MAIN_CPU.update(cpu=best, relative_speed={c: round(speed[best] / s, 2) for c, s in speed.items()})


@pytest.fixture(scope="session", autouse=True)
def fixed_threads():
    torch.set_num_threads(THREADS)
    torch.randn(1 << 22).sum()  # warm torch's (and sqret's) OpenMP pool before the pinning
    try:
        import faiss
    except ImportError:  # the GPU machine has no FAISS: only the GPU suite runs there
        _pin_main_thread()
        return THREADS
    faiss.omp_set_num_threads(THREADS)
    flat = faiss.IndexFlatL2(8)  # and FAISS's own pool
    flat.add(np.zeros((64, 8), np.float32))
    flat.search(np.zeros((4096, 8), np.float32), 1)
    _pin_main_thread()
    return THREADS


def pytest_benchmark_update_json(config, benchmarks, output_json):
    """Record the library versions (and the GPU, if any) beside pytest-benchmark's machine info."""
    import sqret

    versions = {"sqret": sqret.__version__, "torch": torch.__version__, "numpy": np.__version__,
                "backends": [b.name for b in sqret.backends() if b.available]}
    try:
        import faiss

        versions["faiss"] = faiss.__version__
    except ImportError:
        pass
    if torch.cuda.is_available():
        import triton

        versions.update(gpu=torch.cuda.get_device_name(), triton=triton.__version__,
                        driver=torch.cuda.get_device_properties(0).name)
        try:
            import subprocess

            versions["driver"] = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                                                capture_output=True, text=True).stdout.strip()
        except OSError:
            pass
    if MAIN_CPU:
        versions["main_thread_pinned"] = MAIN_CPU
    output_json["versions"] = versions
