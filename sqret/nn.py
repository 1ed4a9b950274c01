"""Quantizer modules built on sqret.ops."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from . import ops
from .cluster import train_pq

MODES = ("soft", "hard", "st")


class ProductQuantizer(nn.Module):
    """Product quantizer of dim-d features into M sub-spaces of K codewords.

    ``mode``: ``"soft"`` (z = softmax(s / tau) @ C per sub-space, differentiable in x and C), ``"hard"``
    (nearest codeword; gradient to the codebooks only), ``"st"`` (straight-through: forward hard, backward
    soft). With ``kmeans_init`` the codebooks are initialised by k-means on the first training batch.

    >>> pq = ProductQuantizer(128, M=8, K=16, tau=0.2); z = pq(x)  # x [B, 128] -> z [B, 128]
    """

    def __init__(self, dim: int, M: int, K: int = 256, tau: float = 1.0, metric: str = "l2", mode: str = "soft",
                 kmeans_init: bool = True):
        super().__init__()
        if not isinstance(dim, int) or not isinstance(M, int) or dim < 1 or M < 1 or dim % M:
            raise ValueError(f"dim = {dim} is not divisible into M = {M} sub-spaces")
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        self.dim, self.M, self.K, self.tau, self.mode = dim, M, K, ops.checks.temperature(tau), mode
        self.metric = ops.checks.metric(metric)
        self.codebooks = nn.Parameter(torch.randn(M, K, dim // M) / (dim // M) ** 0.5)
        self.register_buffer("initialized", torch.tensor(not kmeans_init))

    def extra_repr(self) -> str:
        return f"dim={self.dim}, M={self.M}, K={self.K}, tau={self.tau}, metric={self.metric!r}, mode={self.mode!r}"

    @torch.no_grad()
    def init_kmeans(self, x: torch.Tensor, iters: int = 10) -> None:
        """k-means codebooks from x [N, dim] (N >= K)."""
        C = train_pq(x.detach().float().cpu(), self.M, self.K, iters=iters, metric=self.metric, progress=False)
        self.codebooks.copy_(C.to(self.codebooks))
        self.initialized.fill_(True)

    def codewords(self) -> torch.Tensor:
        """The codewords used for reconstruction [M, K, dsub] (L2-normalised for the cosine metric)."""
        return F.normalize(self.codebooks, dim=-1) if self.metric == "cos" else self.codebooks

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """z [B, dim]: the quantized features (see ``mode``); computed in the codebooks' dtype (float32 under
        autocast too: the kernels accumulate in fp32 but take one dtype)."""
        x = x.to(self.codebooks.dtype)
        if self.training and not bool(self.initialized):
            if x.shape[0] < self.K:
                raise ValueError(f"k-means init needs a first batch of at least K = {self.K} vectors, got "
                                 f"{x.shape[0]} (or pass kmeans_init=False)")
            self.init_kmeans(x)
        if self.mode == "soft":
            return ops.soft_quantize(x, self.codebooks, self.tau, self.metric)
        hard = ops.decode(self.encode(x), self.codewords())
        if self.mode == "hard":
            return hard
        soft = ops.soft_quantize(x, self.codebooks, self.tau, self.metric)
        return soft + (hard - soft).detach()  # forward hard, backward soft

    def probs(self, x: torch.Tensor) -> torch.Tensor:
        """Soft assignments [B, M, K]."""
        return ops.assign_probs(x, self.codebooks, self.tau, self.metric)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Codes [B, M] (uint8 for K <= 256)."""
        return ops.encode(x.detach(), self.codebooks.detach(), self.metric)

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """Reconstructions [B, dim] of codes [B, M]."""
        return ops.decode(codes, self.codewords())


class ResidualQuantizer(nn.Module):
    """Residual (progressive) quantization of dim-d features in ``levels`` stages of K full-dimension
    codewords: stage l quantizes what stages < l left over. A prefix of l codes is a valid code of
    l * log2(K) bits, so one model serves every code length (DPQ).

    ``forward`` returns the soft and hard reconstructions of every prefix, each [levels, B, dim]:
    soft stage l is softmax(-||r_l - c||^2 / tau) @ C_l on the soft residual r_l; hard stage l is the
    nearest codeword of the hard residual (gradient to x and the codebooks through the residual).
    """

    def __init__(self, dim: int, levels: int, K: int = 256, tau: float = 1.0):
        super().__init__()
        if not isinstance(levels, int) or levels < 1 or not isinstance(dim, int) or dim < 1:
            raise ValueError(f"need dim >= 1 and levels >= 1, got dim={dim}, levels={levels}")
        self.dim, self.levels, self.K, self.tau = dim, levels, K, ops.checks.temperature(tau)
        self.codebooks = nn.Parameter(torch.randn(levels, K, dim) / dim**0.5)
        self.metric = "l2"

    def extra_repr(self) -> str:
        return f"dim={self.dim}, levels={self.levels}, K={self.K}, tau={self.tau}"

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(soft, hard) prefix reconstructions, each [levels, B, dim]."""
        x = x.to(self.codebooks.dtype)
        soft_r, hard_r, soft, hard = x, x, [], []
        for l in range(self.levels):
            C = self.codebooks[l : l + 1]  # [1, K, dim]
            qs = ops.soft_quantize(soft_r, C, self.tau)
            qh = ops.decode(ops.encode(hard_r.detach(), C.detach()), C)
            soft_r, hard_r = soft_r - qs, hard_r - qh
            soft.append(x - soft_r)
            hard.append(x - hard_r)
        return torch.stack(soft), torch.stack(hard)

    def probs(self, x: torch.Tensor) -> torch.Tensor:
        """Soft assignments [B, levels, K]: level l's softmax over its codewords of the soft residual."""
        x = x.to(self.codebooks.dtype)
        r, out = x, []
        for l in range(self.levels):
            C = self.codebooks[l : l + 1]
            out.append(ops.assign_probs(r, C, self.tau)[:, 0])
            r = r - ops.soft_quantize(r, C, self.tau)
        return torch.stack(out, 1)

    @torch.no_grad()
    def encode(self, x: torch.Tensor, levels: int | None = None) -> torch.Tensor:
        """Codes [B, levels] (uint8 for K <= 256) of the first ``levels`` stages (default all)."""
        levels = self._levels(levels)
        return ops.residual_encode(x.detach().to(self.codebooks.dtype), self.codebooks[:levels].detach())

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """Reconstructions [B, dim] of prefix codes [B, l] (l <= levels)."""
        return ops.residual_decode(codes, self.codebooks[: self._levels(codes.shape[1])])

    def _levels(self, levels: int | None) -> int:
        levels = self.levels if levels is None else levels
        if not 0 <= levels <= self.levels:
            raise ValueError(f"levels must be in [0, {self.levels}], got {levels}")
        return levels
