"""SPQ (Jang & Cho, ICCV 2021): soft product quantization with the cross-quantized contrastive loss.

Defaults of the paper's code: codewords of d = 16 dimensions, K = 16 per codebook (M = bits / 4: 8 codebooks
for 32 bits), soft assignment softmax(-||x_m - c||^2 / 0.2), NT-Xent temperature 0.5, Adam lr 3e-4,
weight decay 1e-5.
"""

from __future__ import annotations

import torch
from torch import nn

from ..losses import cross_quantized_contrastive
from ..nn import ProductQuantizer
from .base import Method, pq_shape


class SPQ(Method):
    defaults = {"optimizer": "adam", "lr": 3e-4, "weight_decay": 1e-5, "schedule": None, "warmup": 0.0}

    def __init__(self, backbone: nn.Module, *, bits: int = 32, K: int = 16, dsub: int = 16, tau_q: float = 0.2,
                 tau_c: float = 0.5, cross_device_negatives: bool = False):
        super().__init__()
        self.M = pq_shape(bits, K)
        self.backbone = backbone
        self.pq = ProductQuantizer(self.M * dsub, self.M, K, tau=tau_q, mode="soft", kmeans_init=False)
        self.tau_c, self.cross_device = tau_c, bool(cross_device_negatives)

    @classmethod
    def feature_dim(cls, *, bits: int, K: int = 16, dsub: int = 16, **_) -> int:
        return pq_shape(bits, K) * dsub

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Continuous features [B, M * dsub] (the backbone must output that many)."""
        return self.backbone(x)

    def loss(self, xa: torch.Tensor, xb: torch.Tensor, labels=None) -> torch.Tensor:
        """Cross-quantized contrastive loss of two augmented views [B, C, H, W]."""
        fa, fb = self.features(xa), self.features(xb)
        return cross_quantized_contrastive(fa, self.pq(fa), fb, self.pq(fb), self.tau_c, cross_device=self.cross_device)
