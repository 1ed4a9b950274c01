"""Codes: ``encode`` (hard assignment [B, M]) and ``decode`` (reconstruction [N, d], differentiable w.r.t. the
codebooks) as ``sqret::`` custom ops; residual (progressive) codes; the packed 4-bit and fast-scan layouts."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from . import checks, reference, registry
from .checks import code_dtype


def check_encode(x, codebooks, metric) -> None:
    checks.features(x, codebooks)
    checks.metric(metric)


def _encode_impl(x: Tensor, codebooks: Tensor, metric: str) -> Tensor:
    check_encode(x, codebooks, metric)
    return registry.run("encode", registry.device_type(x), x, codebooks, metric)


_encode_op = torch.library.custom_op("sqret::encode", _encode_impl, mutates_args=())


@_encode_op.register_fake
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
def _decode_op(codes: Tensor, codebooks: Tensor, packed: bool = False) -> Tensor:
    check_decode(codes, codebooks, packed)
    checks.code_range(codes, codebooks.shape[1], packed)
    return registry.run("decode", registry.device_type(codebooks), codes, codebooks, packed)


@_decode_op.register_fake
def _(codes, codebooks, packed=False):
    check_decode(codes, codebooks, packed)
    M, _, d = codebooks.shape
    return codebooks.new_empty((codes.shape[0], M * d))


@torch.library.custom_op("sqret::decode_backward", mutates_args=())
def _decode_backward_op(grad: Tensor, codes: Tensor, codebooks: Tensor, packed: bool) -> Tensor:
    return registry.run("decode_backward", registry.device_type(codebooks), grad.contiguous(), codes, codebooks, packed)


@_decode_backward_op.register_fake
def _(grad, codes, codebooks, packed):
    return grad.new_empty(codebooks.shape)


def _decode_setup(ctx, inputs, output):
    codes, codebooks, packed = inputs
    ctx.save_for_backward(codes, codebooks)
    ctx.packed = packed


def _decode_grad(ctx, grad):
    codes, codebooks = ctx.saved_tensors
    return None, torch.ops.sqret.decode_backward(grad, codes, codebooks, ctx.packed), None


_decode_op.register_autograd(_decode_grad, setup_context=_decode_setup)



def encode(x: Tensor, codebooks: Tensor, metric: str = "l2", *, check_finite: bool = False) -> Tensor:
    """Hard assignment codes [B, M] (dtype :func:`code_dtype` (K)); ties go to the smaller index."""
    if check_finite:  # the op checks the rest
        check_encode(x, codebooks, metric)
        checks.finite(x, "x"), checks.finite(codebooks, "codebooks")
    return registry.direct("encode", _encode_impl)(x, codebooks, metric)


def decode(codes: Tensor, codebooks: Tensor, *, packed: bool = False) -> Tensor:
    """Reconstruction [N, d] of codes [N, M] (or packed 4-bit). Differentiable w.r.t. codebooks."""
    check_decode(codes, codebooks, packed)  # before the dispatcher, whose own errors name no argument
    return torch.ops.sqret.decode(codes, codebooks, packed)


def residual_encode(x: Tensor, codebooks: Tensor) -> Tensor:
    """Residual (progressive) codes [B, L] of x [B, d] over codebooks [L, K, d]: level l encodes what the
    levels before it left (nearest codeword, l2)."""
    r, codes = x, []
    for level in range(codebooks.shape[0]):
        C = codebooks[level : level + 1]
        c = encode(r, C)
        r = r - decode(c, C)
        codes.append(c)
    return torch.cat(codes, 1) if codes else torch.empty(x.shape[0], 0, dtype=code_dtype(codebooks.shape[1]))


def residual_decode(codes: Tensor, codebooks: Tensor) -> Tensor:
    """Reconstructions [B, d] of residual codes [B, l] (the first l levels of codebooks [L, K, d]);
    differentiable w.r.t. the codebooks."""
    out = torch.zeros(codes.shape[0], codebooks.shape[2], dtype=codebooks.dtype, device=codebooks.device)
    for level in range(codes.shape[1]):
        out = out + decode(codes[:, level : level + 1], codebooks[level : level + 1])
    return out


def pack4(codes: Tensor) -> Tensor:
    """Codes [N, M] with values in [0, 16) -> packed 4-bit [N, ceil(M/2)] uint8: sub-space 2j in the low
    nibble of byte j, 2j+1 in the high nibble (odd M leaves the last high nibble 0)."""
    checks.tensor(codes, "codes", 2, checks.CODE_DTYPES)
    checks.code_range(codes, 16, False)
    return reference.pack4(codes)


def unpack4(codes: Tensor, M: int) -> Tensor:
    """Packed 4-bit codes [N, ceil(M/2)] uint8 -> codes [N, M] uint8 (the inverse of :func:`pack4`)."""
    checks.tensor(codes, "codes", 2, (torch.uint8,))
    if type(M) is not int or M < 1:
        raise ValueError(f"M must be an int >= 1, got {M!r}")
    if codes.shape[1] != checks.packed_width(M):
        raise ValueError(f"packed 4-bit codes for M = {M} must be [N, {checks.packed_width(M)}], "
                         f"got {tuple(codes.shape)}")
    return reference.unpack4(codes, M)


@dataclass(frozen=True)
class FastScanCodes:
    """4-bit codes in the fast-scan layout: ``blocks`` [ceil(n/64), M, 32] uint8 hold n codes; byte j of
    (block b, sub-space m) has vector 64b+j in its low nibble and vector 64b+32+j in its high nibble.
    Searching this layout needs no per-call conversion (the CPU kernel shuffles 64 codes at a time)."""

    blocks: Tensor
    n: int

    def __len__(self) -> int:
        return self.n


def fastscan_pack(codes: Tensor) -> FastScanCodes:
    """Codes [N, M] with values in [0, 16) (use :func:`unpack4` first for packed codes) -> FastScanCodes."""
    checks.tensor(codes, "codes", 2, checks.CODE_DTYPES)
    checks.code_range(codes, 16, False)
    return FastScanCodes(reference.fastscan_pack(codes.to(torch.uint8), codes.shape[1]), codes.shape[0])


def fastscan_unpack(codes: FastScanCodes) -> Tensor:
    """FastScanCodes -> codes [N, M] uint8."""
    return reference.fastscan_unpack(codes.blocks, codes.n)
