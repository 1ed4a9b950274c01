"""The backend registry: listing, forcing, context manager (per thread), env var, unknown and unavailable names,
what backends accept and decline, policies, explain, a backend of a new name."""

import contextlib
import inspect
import os
import re
import subprocess
import sys
import threading

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

    with _saved_registry():
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


@contextlib.contextmanager
def _saved_registry():
    saved, policies = dict(registry._registry), dict(registry._policies)
    try:
        yield
    finally:
        registry._registry.clear()
        registry._registry.update(saved)
        registry._policies.clear()
        registry._policies.update(policies)
        registry._order.clear()


def _tagged(tag, calls):
    def encode(x, codebooks, metric):
        calls.append(tag)
        return torch.full((x.shape[0], codebooks.shape[0]), len(tag), dtype=torch.uint8)
    return encode


def test_a_declining_backend_hands_the_call_on_and_explain_says_why():
    calls = []
    x, C = torch.randn(3, 4), torch.randn(2, 5, 2)
    with _saved_registry():
        registry.register("fast", ("cpu",), {"encode": registry.Impl(
            _tagged("fast", calls), lambda x, codebooks, metric: "only ip" if metric != "ip" else None)}, priority=50)
        registry.register("slow", ("cpu",), {"encode": _tagged("slow", calls)}, priority=40)
        sqret.ops.encode(x, C, "l2")
        sqret.ops.encode(x, C, "ip")
        assert calls == ["slow", "fast"]
        why = sqret.explain("encode", x, C, "l2")
        assert why.backend == "slow" and ("fast", "declines: only ip") in why.reasons
        assert "encode on cpu tensors (automatic choice): slow runs it" in str(why)
        assert sqret.explain("encode", x, C, "ip").backend == "fast"
        with sqret.use_backend("fast"):  # forced, declining: the reference
            assert sqret.explain("encode", x, C, "l2").backend == "reference"
            assert torch.equal(sqret.ops.encode(x, C, "l2"), sqret.ops.reference.encode(x, C, "l2"))
        assert calls == ["slow", "fast"]
        assert "fast" in {b.name for b in sqret.backends()}


def test_a_policy_orders_the_automatic_choice_only():
    calls = []
    x, C = torch.randn(3, 4), torch.randn(2, 5, 2)
    with _saved_registry():
        registry.register("a", ("cpu",), {"encode": _tagged("a", calls)}, priority=50)
        registry.register("b", ("cpu",), {"encode": _tagged("b", calls)}, priority=40)
        registry.set_policy("encode", lambda x, codebooks, metric: "b" if x.shape[0] > 2 else None)
        sqret.ops.encode(x, C)
        sqret.ops.encode(x[:2], C)
        with sqret.use_backend("a"):
            sqret.ops.encode(x, C)
        assert calls == ["b", "a", "a"]


def test_use_backend_is_per_thread():
    seen, ready, done = {}, threading.Barrier(2), threading.Event()

    def other():
        ready.wait()  # the main thread is inside use_backend now
        seen["other"] = sqret.get_backend()
        done.set()

    t = threading.Thread(target=other)
    t.start()
    with sqret.use_backend("reference"):
        ready.wait()
        done.wait(10)
        seen["main"] = sqret.get_backend()
    t.join()
    assert seen == {"main": "reference", "other": "auto"}


def test_backends_decline_through_the_registry_only():
    """No backend calls the reference's (or another backend's) implementation of an op: it declines instead."""
    ops = set(registry._registry["reference"].impls)
    for mod in (sqret.ops.cpu_native, sqret.ops.cuda_backend, sqret.ops.triton_backend):
        src = inspect.getsource(mod)
        called = set(re.findall(r"\breference\.(\w+)\(", src)) & ops
        assert not called, f"{mod.__name__} runs reference ops itself: {sorted(called)}"
        assert "NotImplemented" not in src


def test_explain_on_real_backends():
    lut, codes = torch.randn(2, 4, 16), torch.randint(0, 16, (50, 4), dtype=torch.uint8)
    plain = sqret.explain("adc_topk", lut, codes, 5, False, False)
    wide = sqret.explain("adc_topk", lut.double(), codes, 5, False, False)
    assert wide.backend == "reference"
    if sqret.ops.cpu_native._cpu is not None:
        assert plain.backend == "cpu_native"
        assert ("cpu_native", "declines: float64 inputs: float64 results are the reference's") in wide.reasons
    names = [n for n, _ in plain.reasons] + [plain.backend]
    assert sorted(names) == sorted(b.name for b in sqret.backends())  # every backend accounted for, once


def _run_python(code, **env):
    full = {**os.environ, **env}
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=full)


def test_env_var_forces_a_backend_and_rejects_unknown_names():
    ok = _run_python("import sqret; print(sqret.get_backend())", SQRET_BACKEND="reference")
    assert ok.returncode == 0 and ok.stdout.strip() == "reference"
    bad = _run_python("import sqret", SQRET_BACKEND="warp9")
    assert bad.returncode != 0 and "SQRET_BACKEND: unknown backend 'warp9'" in bad.stderr
