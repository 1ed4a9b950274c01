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


# ---------------------------------------------------------------- soft_quantize


@torch.library.custom_op("sqret::soft_quantize", mutates_args=())
def _soft_quantize_op(x: Tensor, codebooks: Tensor, tau: float, metric: str) -> Tensor:
    check_soft(x, codebooks, tau, metric)
    return registry.run("soft_quantize", registry.device_type(x), x, codebooks, tau, metric)


@_soft_quantize_op.register_fake
def _(x, codebooks, tau, metric):
    check_soft(x, codebooks, tau, metric)
    return x.new_empty(x.shape)


@torch.library.custom_op("sqret::soft_quantize_backward", mutates_args=())
def _soft_quantize_backward_op(
    grad: Tensor, x: Tensor, codebooks: Tensor, tau: float, metric: str
) -> tuple[Tensor, Tensor]:
    check_soft(x, codebooks, tau, metric)
    return registry.run("soft_quantize_backward", registry.device_type(x), grad.contiguous(), x, codebooks, tau, metric)


@_soft_quantize_backward_op.register_fake
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


_soft_quantize_op.register_autograd(_soft_quantize_grad, setup_context=_save_x_codebooks)

# ---------------------------------------------------------------- assign_probs


@torch.library.custom_op("sqret::assign_probs", mutates_args=())
def _assign_probs_op(x: Tensor, codebooks: Tensor, tau: float, metric: str) -> Tensor:
    check_soft(x, codebooks, tau, metric)
    return registry.run("assign_probs", registry.device_type(x), x, codebooks, tau, metric)


@_assign_probs_op.register_fake
def _(x, codebooks, tau, metric):
    check_soft(x, codebooks, tau, metric)
    return x.new_empty((x.shape[0], codebooks.shape[0], codebooks.shape[1]))


@torch.library.custom_op("sqret::assign_probs_backward", mutates_args=())
def _assign_probs_backward_op(
    grad: Tensor, x: Tensor, codebooks: Tensor, tau: float, metric: str
) -> tuple[Tensor, Tensor]:
    check_soft(x, codebooks, tau, metric)
    return registry.run("assign_probs_backward", registry.device_type(x), grad.contiguous(), x, codebooks, tau, metric)


@_assign_probs_backward_op.register_fake
def _(grad, x, codebooks, tau, metric):
    return x.new_empty(x.shape), codebooks.new_empty(codebooks.shape)


def _assign_probs_grad(ctx, grad):
    x, codebooks = ctx.saved_tensors
    gx, gc = torch.ops.sqret.assign_probs_backward(grad, x, codebooks, ctx.tau, ctx.metric)
    return gx, gc, None, None


_assign_probs_op.register_autograd(_assign_probs_grad, setup_context=_save_x_codebooks)


def soft_quantize(
    x: Tensor, codebooks: Tensor, tau: float = 1.0, metric: str = "l2", *, check_finite: bool = False
) -> Tensor:
    """Soft product quantization z [B, d] of x [B, d]: per sub-space softmax(s(x_m, c) / tau) @ C_m.

    Differentiable w.r.t. ``x`` and ``codebooks``; the backward recomputes the probabilities, so only
    x and codebooks are saved. For ``"cos"`` the codewords are L2-normalized before use.
    """
    check_soft(x, codebooks, tau, metric)  # before the dispatcher, whose own errors name no argument
    if check_finite:
        checks.finite(x, "x"), checks.finite(codebooks, "codebooks")
    return torch.ops.sqret.soft_quantize(x, codebooks, tau, metric)


def assign_probs(
    x: Tensor, codebooks: Tensor, tau: float = 1.0, metric: str = "l2", *, check_finite: bool = False
) -> Tensor:
    """Soft assignment probabilities p [B, M, K] = softmax(s(x_m, c_mk) / tau). Differentiable."""
    check_soft(x, codebooks, tau, metric)  # before the dispatcher, whose own errors name no argument
    if check_finite:
        checks.finite(x, "x"), checks.finite(codebooks, "codebooks")
    return torch.ops.sqret.assign_probs(x, codebooks, tau, metric)
