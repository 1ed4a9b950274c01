"""SSCQ / HQC (hybrid contrastive quantization): an embedding MLP after the backbone, soft product
quantization of the embedding, and five terms:

- instance contrastive (NT-Xent) between the views' embeddings f, tau 0.5, weight 1;
- the same between the views' quantized embeddings z, tau 0.5, weight 1;
- consistent contrastive on the fused u = f + z: symmetric KL of the two views' similarity distributions
  over shared negatives (the other samples' embeddings in both views), tau 0.2, weight 0.4;
- part-neighbour consistency per codebook: the 20 nearest sub-vectors of the twin are pseudo-positives,
  tau 0.5, weight 0.1;
- codeword diversity: negative entropy of the batch-mean cosine assignments, weight 0.2.

Adam, lr 5e-4, linear warm-up (5% of the steps) and cosine decay.
"""

from __future__ import annotations

import torch
from torch import nn

from .. import losses, ops
from ..nn import ProductQuantizer
from .base import Method, pq_shape


class SSCQ(Method):
    defaults = {"optimizer": "adam", "lr": 5e-4, "weight_decay": 1e-5, "schedule": "cosine", "warmup": 0.05}

    def __init__(self, backbone: nn.Module, *, bits: int = 32, K: int = 256, dsub: int = 16, tau_q: float = 0.2,
                 tau: float = 0.5, tau_cc: float = 0.2, neighbours: int = 20, w_quant: float = 1.0, w_cc: float = 0.4,
                 w_pn: float = 0.1, w_div: float = 0.2, cross_device_negatives: bool = False):
        super().__init__()
        self.M = pq_shape(bits, K)
        dim = self.M * dsub
        self.backbone = backbone
        width = getattr(backbone, "dim", dim)
        self.embed = nn.Sequential(nn.Linear(width, width), nn.BatchNorm1d(width), nn.ReLU(), nn.Linear(width, dim))
        self.pq = ProductQuantizer(dim, self.M, K, tau=tau_q, mode="soft", kmeans_init=False)
        self.tau, self.tau_cc, self.neighbours = tau, tau_cc, neighbours
        self.cross_device = bool(cross_device_negatives)  # for the two NT-Xent terms (the others are per batch)
        self.w = {"quant": w_quant, "cc": w_cc, "pn": w_pn, "div": w_div}

    @classmethod
    def feature_dim(cls, *, bits: int, K: int = 256, dsub: int = 16, **_) -> int:
        return pq_shape(bits, K) * dsub

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The embeddings f [B, M * dsub] that are quantized and searched."""
        return self.embed(self.backbone(x))

    def loss(self, xa: torch.Tensor, xb: torch.Tensor, labels=None) -> torch.Tensor:
        fa, fb = self.features(xa), self.features(xb)
        za, zb = self.pq(fa), self.pq(fb)
        sub = lambda z: z.reshape(z.shape[0], self.M, -1)  # noqa: E731
        probs = ops.assign_probs(torch.cat([fa, fb]).float(), self.pq.codebooks, self.pq.tau, "cos")
        xd = self.cross_device
        return (losses.nt_xent(fa, fb, self.tau, cross_device=xd)
                + self.w["quant"] * losses.nt_xent(za, zb, self.tau, cross_device=xd)
                + self.w["cc"] * losses.consistent_contrastive(fa + za, fb + zb, self.tau_cc)
                + self.w["pn"] * losses.part_neighbour_consistency(sub(za), sub(zb), self.tau, self.neighbours)
                + self.w["div"] * losses.codeword_diversity(probs))
