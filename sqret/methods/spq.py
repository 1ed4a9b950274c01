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


class SPQ(nn.Module):
    defaults = {"lr": 3e-4, "weight_decay": 1e-5}

    def __init__(self, backbone: nn.Module, bits: int = 32, K: int = 16, sub_dim: int = 16, tau_q: float = 0.2,
                 tau_c: float = 0.5):
        super().__init__()
        nbits = K.bit_length() - 1
        if K != 1 << nbits or bits % nbits:
            raise ValueError(f"bits = {bits} must be a multiple of log2(K) = {nbits} (K a power of two)")
        self.M = bits // nbits
        self.backbone = backbone
        self.pq = ProductQuantizer(self.M * sub_dim, self.M, K, tau=tau_q, mode="soft", kmeans_init=False)
        self.tau_c = tau_c

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Continuous features [B, M * sub_dim] (the backbone must output that many)."""
        return self.backbone(x)

    def loss(self, xa: torch.Tensor, xb: torch.Tensor) -> torch.Tensor:
        """Cross-quantized contrastive loss of two augmented views [B, C, H, W]."""
        fa, fb = self.features(xa), self.features(xb)
        return cross_quantized_contrastive(fa, self.pq(fa), fb, self.pq(fb), self.tau_c)
