import os


def _cuda_present() -> bool:
    """A CUDA GPU, asked without importing torch (TRITON_INTERPRET must be decided before triton loads)."""
    import ctypes

    for name in ("libcuda.so.1", "libcuda.so"):
        try:
            lib = ctypes.CDLL(name)
        except OSError:
            continue
        count = ctypes.c_int(0)
        return lib.cuInit(0) == 0 and lib.cuDeviceGetCount(ctypes.byref(count)) == 0 and count.value > 0
    return False


# Before any @triton.jit runs: without a GPU the kernels run in the interpreter on CPU tensors; with one,
# the compiled kernels are tested (an explicit TRITON_INTERPRET in the environment is kept either way).
if "TRITON_INTERPRET" not in os.environ and not _cuda_present():
    os.environ["TRITON_INTERPRET"] = "1"

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

DATA = Path(os.environ.get("SQRET_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))


@pytest.fixture(scope="session")
def data_dir():
    """../shared/data beside the checkout (or $SQRET_DATA); tests that need it skip where it is absent."""
    if not DATA.is_dir():
        pytest.skip(f"real data not found at {DATA} (set SQRET_DATA to the shared data folder)")
    return DATA


@pytest.fixture(autouse=True)
def _seed_and_backend():
    torch.manual_seed(0)
    import sqret

    sqret.set_backend("auto")
    yield
    sqret.set_backend("auto")
