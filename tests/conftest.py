import os

os.environ.setdefault("TRITON_INTERPRET", "1")  # before any @triton.jit runs: kernels run on CPU tensors

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
