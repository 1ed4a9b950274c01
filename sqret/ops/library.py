"""The ``sqret::*`` custom ops: schema, structural checks, fake kernels, autograd, backend dispatch.

Each op's real kernel validates its arguments, then runs the implementation that
:func:`sqret.ops.registry.select` picks for the tensor's device. Fake kernels run the same structural
checks, so ``torch.compile`` reports a bad shape at trace time.
"""

from __future__ import annotations

import torch
from torch import Tensor

from . import checks, reference, registry


def _run(op: str, on: Tensor, *args):
    """Run op on the backend chosen for the device of tensor ``on``."""
    return registry.select(op, registry.device_type(on))[1](*args)


def direct(op: str):
    """The op to call: in eager mode the non-differentiable ops skip the dispatcher (~20 us a call) and run
    their implementation directly; under torch.compile the registered op is traced."""
    if torch.compiler.is_compiling():
        return getattr(torch.ops.sqret, op)
    return globals()[f"{op}_impl"]


def check_soft(x, codebooks, tau, metric) -> None:
    checks.features(x, codebooks)
    checks.temperature(tau)
    checks.metric(metric)


# ---------------------------------------------------------------- soft_quantize


@torch.library.custom_op("sqret::soft_quantize", mutates_args=())
def soft_quantize(x: Tensor, codebooks: Tensor, tau: float, metric: str) -> Tensor:
    check_soft(x, codebooks, tau, metric)
    return _run("soft_quantize", x, x, codebooks, tau, metric)


@soft_quantize.register_fake
def _(x, codebooks, tau, metric):
    check_soft(x, codebooks, tau, metric)
    return x.new_empty(x.shape)


@torch.library.custom_op("sqret::soft_quantize_backward", mutates_args=())
def soft_quantize_backward(
    grad: Tensor, x: Tensor, codebooks: Tensor, tau: float, metric: str
) -> tuple[Tensor, Tensor]:
    check_soft(x, codebooks, tau, metric)
    return _run("soft_quantize_backward", x, grad.contiguous(), x, codebooks, tau, metric)


@soft_quantize_backward.register_fake
def _(grad, x, codebooks, tau, metric):
    return x.new_empty(x.shape), codebooks.new_empty(codebooks.shape)


def _save_x_codebooks(ctx, inputs, output):
    x, codebooks, tau, metric = inputs
    ctx.save_for_backward(x, codebooks)
    ctx.tau, ctx.metric = tau, metric


def _soft_quantize_grad(ctx, grad):
    x, codebooks = ctx.saved_tensors
    gx, gc = torch.ops.sqret.soft_quantize_backward(grad, x, codebooks, ctx.tau, ctx.metric)
    return gx, gc, None, None


soft_quantize.register_autograd(_soft_quantize_grad, setup_context=_save_x_codebooks)

# ---------------------------------------------------------------- assign_probs


@torch.library.custom_op("sqret::assign_probs", mutates_args=())
def assign_probs(x: Tensor, codebooks: Tensor, tau: float, metric: str) -> Tensor:
    check_soft(x, codebooks, tau, metric)
    return _run("assign_probs", x, x, codebooks, tau, metric)


@assign_probs.register_fake
def _(x, codebooks, tau, metric):
    check_soft(x, codebooks, tau, metric)
    return x.new_empty((x.shape[0], codebooks.shape[0], codebooks.shape[1]))


@torch.library.custom_op("sqret::assign_probs_backward", mutates_args=())
def assign_probs_backward(
    grad: Tensor, x: Tensor, codebooks: Tensor, tau: float, metric: str
) -> tuple[Tensor, Tensor]:
    check_soft(x, codebooks, tau, metric)
    return _run("assign_probs_backward", x, grad.contiguous(), x, codebooks, tau, metric)


@assign_probs_backward.register_fake
def _(grad, x, codebooks, tau, metric):
    return x.new_empty(x.shape), codebooks.new_empty(codebooks.shape)


def _assign_probs_grad(ctx, grad):
    x, codebooks = ctx.saved_tensors
    gx, gc = torch.ops.sqret.assign_probs_backward(grad, x, codebooks, ctx.tau, ctx.metric)
    return gx, gc, None, None


assign_probs.register_autograd(_assign_probs_grad, setup_context=_save_x_codebooks)

# ---------------------------------------------------------------- encode


def check_encode(x, codebooks, metric) -> None:
    checks.features(x, codebooks)
    checks.metric(metric)


def encode_impl(x: Tensor, codebooks: Tensor, metric: str) -> Tensor:
    check_encode(x, codebooks, metric)
    return _run("encode", x, x, codebooks, metric)


encode = torch.library.custom_op("sqret::encode", encode_impl, mutates_args=())


@encode.register_fake
def _(x, codebooks, metric):
    check_encode(x, codebooks, metric)
    M, K, _ = codebooks.shape
    return x.new_empty((x.shape[0], M), dtype=checks.code_dtype(K))


# ---------------------------------------------------------------- decode


def check_decode(codes, codebooks, packed) -> None:
    M, K, _ = checks.codebooks(codebooks)
    checks.codes(codes, M, K, packed)
    checks.same_device(("codes", codes), ("codebooks", codebooks))


@torch.library.custom_op("sqret::decode", mutates_args=())
def decode(codes: Tensor, codebooks: Tensor, packed: bool = False) -> Tensor:
    check_decode(codes, codebooks, packed)
    checks.code_range(codes, codebooks.shape[1], packed)
    return _run("decode", codebooks, codes, codebooks, packed)


@decode.register_fake
def _(codes, codebooks, packed=False):
    check_decode(codes, codebooks, packed)
    M, _, d = codebooks.shape
    return codebooks.new_empty((codes.shape[0], M * d))


@torch.library.custom_op("sqret::decode_backward", mutates_args=())
def decode_backward(grad: Tensor, codes: Tensor, codebooks: Tensor, packed: bool) -> Tensor:
    return _run("decode_backward", codebooks, grad.contiguous(), codes, codebooks, packed)


@decode_backward.register_fake
def _(grad, codes, codebooks, packed):
    return grad.new_empty(codebooks.shape)


def _decode_setup(ctx, inputs, output):
    codes, codebooks, packed = inputs
    ctx.save_for_backward(codes, codebooks)
    ctx.packed = packed


def _decode_grad(ctx, grad):
    codes, codebooks = ctx.saved_tensors
    return None, torch.ops.sqret.decode_backward(grad, codes, codebooks, ctx.packed), None


decode.register_autograd(_decode_grad, setup_context=_decode_setup)

# ---------------------------------------------------------------- build_lut


def check_lut(q, codebooks, metric) -> tuple[int, int, int]:
    """Queries [Q, M*d] against codebooks [M, K, d], a LUT metric; returns (M, K, d)."""
    checks.metric(metric, checks.LUT_METRICS)
    return checks.features(q, codebooks, "queries")


def build_lut_impl(q: Tensor, codebooks: Tensor, metric: str, dtype: torch.dtype | None = None) -> Tensor:
    check_lut(q, codebooks, metric)
    return _run("build_lut", q, q, codebooks, metric, dtype)


build_lut = torch.library.custom_op("sqret::build_lut", build_lut_impl, mutates_args=())


@build_lut.register_fake
def _(q, codebooks, metric, dtype=None):
    check_lut(q, codebooks, metric)
    M, K, _ = codebooks.shape
    cd = torch.float64 if torch.float64 in (q.dtype, codebooks.dtype) else torch.float32
    return q.new_empty((q.shape[0], M, K), dtype=dtype or cd)


# ---------------------------------------------------------------- adc_topk


def _nan_check(impl, lut: Tensor) -> None:
    """A NaN in the LUT is an error; implementations marked ``checks_nan`` test it in their own pass."""
    if not getattr(impl, "checks_nan", False):
        checks.no_nan(lut, "lut")


def check_adc(lut, codes, k, packed) -> None:
    _, M, K = checks.lut(lut)
    checks.codes(codes, M, K, packed)
    checks.topk_k(k)
    checks.same_device(("lut", lut), ("codes", codes))


def adc_topk_impl(
    lut: Tensor, codes: Tensor, k: int, largest: bool = False, packed: bool = False
) -> tuple[Tensor, Tensor]:
    check_adc(lut, codes, k, packed)
    checks.code_range(codes, lut.shape[2], packed)
    impl = registry.select("adc_topk", registry.device_type(lut))[1]
    _nan_check(impl, lut)
    return impl(lut, codes, k, largest, packed)


adc_topk = torch.library.custom_op("sqret::adc_topk", adc_topk_impl, mutates_args=())


@adc_topk.register_fake
def _(lut, codes, k, largest=False, packed=False):
    check_adc(lut, codes, k, packed)
    vd = torch.float64 if lut.dtype == torch.float64 else torch.float32
    Q = lut.shape[0]
    return lut.new_empty((Q, k), dtype=vd), lut.new_empty((Q, k), dtype=torch.int64)


# ---------------------------------------------------------------- adc_topk over fast-scan blocks (4-bit)


def check_fastscan(lut, blocks, n, k) -> None:
    _, M, K = checks.lut(lut)
    check_blocks(blocks, n, M, K)
    checks.topk_k(k)
    checks.same_device(("lut", lut), ("blocks", blocks))


def check_blocks(blocks, n: int, M: int, K: int) -> None:
    """Fast-scan blocks holding n codes of M sub-spaces (K must be 16)."""
    if K != 16:
        raise ValueError(f"fast-scan codes need K = 16 codewords, got K = {K}")
    B = reference.FASTSCAN_BLOCK
    nb = (n + B - 1) // B
    if type(blocks) is Tensor and blocks.dtype is torch.uint8 and blocks.shape == (nb, M, B // 2):
        return
    checks.tensor(blocks, "blocks", 3, (torch.uint8,))
    if tuple(blocks.shape) != (nb, M, B // 2):
        want, got = (nb, M, B // 2), tuple(blocks.shape)
        raise ValueError(f"fast-scan blocks for n = {n} codes, M = {M} must be {list(want)}, got {list(got)}")


def adc_topk_fastscan_impl(
    lut: Tensor, blocks: Tensor, n: int, k: int, largest: bool = False, exact: bool = True
) -> tuple[Tensor, Tensor]:
    check_fastscan(lut, blocks, n, k)
    impl = registry.select("adc_topk_fastscan", registry.device_type(lut))[1]
    _nan_check(impl, lut)
    return impl(lut, blocks, n, k, largest, exact)


adc_topk_fastscan = torch.library.custom_op("sqret::adc_topk_fastscan", adc_topk_fastscan_impl, mutates_args=())


@adc_topk_fastscan.register_fake
def _(lut, blocks, n, k, largest=False, exact=True):
    check_fastscan(lut, blocks, n, k)
    Q = lut.shape[0]
    return lut.new_empty((Q, k), dtype=torch.float32), lut.new_empty((Q, k), dtype=torch.int64)
