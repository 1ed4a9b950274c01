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
    import faiss

    torch.set_num_threads(THREADS)
    faiss.omp_set_num_threads(THREADS)
    return THREADS


def pytest_benchmark_update_json(config, benchmarks, output_json):
    """Record the library versions beside pytest-benchmark's machine info."""
    import faiss

    import sqret

    output_json["versions"] = {
        "sqret": sqret.__version__,
        "torch": torch.__version__,
        "faiss": faiss.__version__,
        "numpy": np.__version__,
        "backends": [b.name for b in sqret.backends() if b.available],
    }
