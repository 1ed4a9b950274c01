"""Losses of the self-supervised quantization methods (shapes: features [B, D], probabilities [B, M, K])."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def nt_xent(a: torch.Tensor, b: torch.Tensor, tau: float = 0.5) -> torch.Tensor:
    """NT-Xent (SimCLR) between two views a, b [B, D]: each row's positive is its twin in the other view,
    the 2B - 2 other rows are negatives; cosine similarity / tau; mean over the 2B rows."""
    B = a.shape[0]
    z = F.normalize(torch.cat([a, b]), dim=1)
    sim = z @ z.T / tau
    sim = sim.masked_fill(torch.eye(2 * B, dtype=torch.bool, device=z.device), float("-inf"))
    target = torch.cat([torch.arange(B, 2 * B), torch.arange(0, B)]).to(z.device)
    return F.cross_entropy(sim, target)


def cross_quantized_contrastive(xa, za, xb, zb, tau: float = 0.5) -> torch.Tensor:
    """SPQ: NT-Xent(X_a, Z_b) + NT-Xent(X_b, Z_a): features of one view against quantized features of the other."""
    return nt_xent(xa, zb, tau) + nt_xent(xb, za, tau)


def codeword_diversity(probs: torch.Tensor) -> torch.Tensor:
    """Negative entropy of the batch-mean assignment per codebook, averaged over codebooks: minimising it
    spreads the batch over all codewords. probs [B, M, K]."""
    pbar = probs.mean(0)
    return (pbar * torch.log(pbar.clamp_min(1e-12))).sum(-1).mean()
