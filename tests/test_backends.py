"""The backend registry: listing, forcing, context manager, env var, unknown and unavailable names."""

import os
import subprocess
import sys

import pytest
import torch

import sqret
from sqret.ops import registry


def test_backends_lists_every_backend_with_a_reason():
    infos = {b.name: b for b in sqret.backends()}
    assert set(infos) == {"reference", "triton", "cuda", "cpu_native"}
    assert infos["reference"].available and infos["reference"].reason is None
    assert "adc_topk" in infos["reference"].ops
    for b in infos.values():
        assert b.available or b.reason


def test_set_backend_and_context_manager():
    assert sqret.get_backend() == "auto"
    with sqret.use_backend("reference"):
        assert sqret.get_backend() == "reference"
        assert registry.select("encode", "cpu")[0] == "reference"
    assert sqret.get_backend() == "auto"
    sqret.set_backend("reference")
    assert sqret.get_backend() == "reference"
    sqret.set_backend(None)
    assert sqret.get_backend() == "auto"


def test_unknown_and_unavailable_backends_are_clear_errors():
    with pytest.raises(ValueError, match="unknown backend 'fast'"):
        sqret.set_backend("fast")
    unavailable = [b for b in sqret.backends() if not b.available]
    for b in unavailable:
        with pytest.raises(RuntimeError, match=f"backend '{b.name}' is unavailable"):
            sqret.set_backend(b.name)
    assert sqret.get_backend() == "auto"


def test_forced_backend_runs_its_ops_and_falls_back_for_the_rest(monkeypatch):
    calls = []

    def fake_encode(x, codebooks, metric):
        calls.append("encode")
        return torch.zeros(x.shape[0], codebooks.shape[0], dtype=torch.uint8)

    saved = dict(registry._registry)
    try:
        registry.register("cpu_native", ("cpu",), {"encode": fake_encode}, priority=5)
        x, C = torch.randn(3, 4), torch.randn(2, 5, 2)
        sqret.ops.encode(x, C)  # auto: highest priority wins
        assert calls == ["encode"]
        with sqret.use_backend("reference"):
            sqret.ops.encode(x, C)
        assert calls == ["encode"]
        with sqret.use_backend("cpu_native"):
            assert registry.select("build_lut", "cpu")[0] == "reference"  # not implemented: fallback
            with pytest.raises(RuntimeError, match="does not run on cuda tensors"):
                registry.select("encode", "cuda")
    finally:
        registry._registry.clear()
        registry._registry.update(saved)


def _run_python(code, **env):
    full = {**os.environ, **env}
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=full)


def test_env_var_forces_a_backend_and_rejects_unknown_names():
    ok = _run_python("import sqret; print(sqret.get_backend())", SQRET_BACKEND="reference")
    assert ok.returncode == 0 and ok.stdout.strip() == "reference"
    bad = _run_python("import sqret", SQRET_BACKEND="warp9")
    assert bad.returncode != 0 and "SQRET_BACKEND: unknown backend 'warp9'" in bad.stderr
