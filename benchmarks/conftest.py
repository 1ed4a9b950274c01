"""Shared fixtures for the benchmark suites: datasets encoded once per session, the same codes for every
system (copied into FAISS), threads fixed for all."""

import os
from pathlib import Path

import numpy as np
import pytest
import torch

DATA = Path(os.environ.get("SQRET_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
THREADS = int(os.environ.get("SQRET_BENCH_THREADS", os.cpu_count() or 1))


@pytest.fixture(scope="session", autouse=True)
def fixed_threads():
    torch.set_num_threads(THREADS)
    try:
        import faiss
    except ImportError:  # the GPU machine has no FAISS: only the GPU suite runs there
        return THREADS
    faiss.omp_set_num_threads(THREADS)
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
    output_json["versions"] = versions
