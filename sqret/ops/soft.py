"""Soft quantization: ``soft_quantize`` (z [B, d]) and ``assign_probs`` (p [B, M, K]) of x [B, d] over codebooks
[M, K, dsub]; the ``sqret::`` custom ops with their fake kernels and autograd (the backward ops recompute the
probabilities: only x and the codebooks are saved). Reference: ``reference.soft_quantize`` and friends."""

from __future__ import annotations

import torch
from torch import Tensor

from . import checks, registry


def check_soft(x, codebooks, tau, metric) -> None:
    checks.features(x, codebooks)
    checks.temperature(tau)
    checks.metric(metric)


def _define(name: str, out_shape) -> None:
    """The custom op ``sqret::<name>`` (x, codebooks, tau, metric) -> [out_shape(x, codebooks)], its backward op
    ``sqret::<name>_backward`` (grad, x, codebooks, tau, metric) -> (grad x, grad codebooks), fake kernels and
    autograd: the backward recomputes the probabilities, so only x and the codebooks are saved."""

    def forward(x: Tensor, codebooks: Tensor, tau: float, metric: str) -> Tensor:
        check_soft(x, codebooks, tau, metric)
        return registry.run(name, registry.device_type(x), x, codebooks, tau, metric)

    def backward(grad: Tensor, x: Tensor, codebooks: Tensor, tau: float, metric: str) -> tuple[Tensor, Tensor]:
        check_soft(x, codebooks, tau, metric)
        return registry.run(f"{name}_backward", registry.device_type(x), grad.contiguous(), x, codebooks, tau, metric)

    op = torch.library.custom_op(f"sqret::{name}", forward, mutates_args=())
    back = torch.library.custom_op(f"sqret::{name}_backward", backward, mutates_args=())

    @op.register_fake
    def _(x, codebooks, tau, metric):
        check_soft(x, codebooks, tau, metric)
        return x.new_empty(out_shape(x, codebooks))

    @back.register_fake
    def _(grad, x, codebooks, tau, metric):
        return x.new_empty(x.shape), codebooks.new_empty(codebooks.shape)

    def setup(ctx, inputs, output):
        x, codebooks, tau, metric = inputs
        ctx.save_for_backward(x, codebooks)
        ctx.tau, ctx.metric = tau, metric

    def grad_fn(ctx, grad):
        x, codebooks = ctx.saved_tensors
        gx, gc = getattr(torch.ops.sqret, f"{name}_backward")(grad, x, codebooks, ctx.tau, ctx.metric)
        return gx, gc, None, None

    op.register_autograd(grad_fn, setup_context=setup)


_define("soft_quantize", lambda x, codebooks: x.shape)
_define("assign_probs", lambda x, codebooks: (x.shape[0], codebooks.shape[0], codebooks.shape[1]))


def _checked(x: Tensor, codebooks: Tensor, tau: float, metric: str, check_finite: bool) -> None:
    check_soft(x, codebooks, tau, metric)  # before the dispatcher, whose own errors name no argument
    if check_finite:
        checks.finite(x, "x"), checks.finite(codebooks, "codebooks")


def soft_quantize(
    x: Tensor, codebooks: Tensor, tau: float = 1.0, metric: str = "l2", *, check_finite: bool = False
) -> Tensor:
    """Soft product quantization z [B, d] of x [B, d]: per sub-space softmax(s(x_m, c) / tau) @ C_m.

    Differentiable w.r.t. ``x`` and ``codebooks``; the backward recomputes the probabilities, so only
    x and codebooks are saved. For ``"cos"`` the codewords are L2-normalized before use.
    """
    _checked(x, codebooks, tau, metric, check_finite)
    return torch.ops.sqret.soft_quantize(x, codebooks, tau, metric)


def assign_probs(
    x: Tensor, codebooks: Tensor, tau: float = 1.0, metric: str = "l2", *, check_finite: bool = False
) -> Tensor:
    """Soft assignment probabilities p [B, M, K] = softmax(s(x_m, c_mk) / tau). Differentiable."""
    _checked(x, codebooks, tau, metric, check_finite)
    return torch.ops.sqret.assign_probs(x, codebooks, tau, metric)
