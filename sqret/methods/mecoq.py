"""MeCoQ (Wang et al., AAAI 2022): contrastive quantization with code memory.

Sub-vectors and codewords are L2-normalised and assigned by softmax(10 cos) (``alpha`` = 10); the quantized
features of two views are contrasted with the debiased contrastive loss (tau 0.4, positive prior 0.1), with
a *code memory* of past batches' soft codes as extra negatives: the memory stores assignments [S, M, K],
not features, and they are decoded with the current codebooks at every step, so old entries do not drift
from the model. The memory is used from epoch 3 on. Regularizers: the per-sample assignment entropy
(weight 0.05) and the mean codeword cosine similarity (weight 0.5). The paper fine-tunes VGG-16 with SGD
(lr 0.01, momentum 0.9, 1 warm-up epoch, cosine decay): those are the defaults here.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .. import losses
from ..nn import ProductQuantizer
from .base import Method, pq_shape


class MeCoQ(Method):
    defaults = {"optimizer": "sgd", "lr": 1e-2, "weight_decay": 1e-5, "momentum": 0.9, "schedule": "cosine",
                "warmup": 0.02}

    def __init__(self, backbone: nn.Module, *, bits: int = 32, K: int = 256, dsub: int = 16, alpha: float = 10.0,
                 tau: float = 0.4, pos_prior: float = 0.1, memory: int = 512, memory_from_epoch: int = 3,
                 w_entropy: float = 0.05, w_codeword: float = 0.5, cross_device_negatives: bool = False):
        super().__init__()
        self.M = pq_shape(bits, K)
        self.backbone = backbone
        self.pq = ProductQuantizer(self.M * dsub, self.M, K, tau=1.0 / alpha, metric="cos", mode="soft",
                                   kmeans_init=False)
        self.tau, self.pos_prior, self.memory_from_epoch = tau, pos_prior, memory_from_epoch
        self.w_entropy, self.w_codeword = w_entropy, w_codeword
        self.cross_device = bool(cross_device_negatives)
        self.register_buffer("memory", torch.zeros(memory, self.M, K))
        self.register_buffer("memory_size", torch.zeros((), dtype=torch.int64))  # filled entries
        self.register_buffer("memory_next", torch.zeros((), dtype=torch.int64))  # ring-buffer position
        self._use_memory = False

    @classmethod
    def feature_dim(cls, *, bits: int, K: int = 256, dsub: int = 16, **_) -> int:
        return pq_shape(bits, K) * dsub

    def start_epoch(self, epoch: int) -> None:
        self._use_memory = self.memory.shape[0] > 0 and epoch >= self.memory_from_epoch

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Backbone features with each sub-vector L2-normalised [B, M * dsub]."""
        f = self.backbone(x)
        return F.normalize(f.reshape(f.shape[0], self.M, -1), dim=-1).reshape(f.shape[0], -1)

    @torch.no_grad()
    def _remember(self, probs: torch.Tensor) -> None:
        S, n = self.memory.shape[0], probs.shape[0]
        pos = (self.memory_next + torch.arange(n, device=probs.device)) % S
        self.memory[pos[-S:]] = probs[-S:].to(self.memory)
        self.memory_next.copy_((self.memory_next + n) % S)
        self.memory_size.copy_(torch.clamp(self.memory_size + n, max=S))

    def loss(self, xa: torch.Tensor, xb: torch.Tensor, labels=None) -> torch.Tensor:
        fa, fb = self.features(xa), self.features(xb)
        za, zb = self.pq(fa), self.pq(fb)
        pa = self.pq.probs(fa)
        memory = None
        if self._use_memory and int(self.memory_size):
            mem = self.memory[: int(self.memory_size)].clone()  # soft codes (a copy: updated below)
            memory = torch.einsum("smk,mkd->smd", mem, self.pq.codewords()).reshape(mem.shape[0], -1)
        loss = (losses.debiased_contrastive(za, zb, self.tau, self.pos_prior, memory, cross_device=self.cross_device)
                + self.w_entropy * (losses.assignment_entropy(pa) + losses.assignment_entropy(self.pq.probs(fb))) / 2
                + self.w_codeword * losses.codeword_similarity(self.pq.codebooks))
        if self.training and self.memory.shape[0]:
            self._remember(pa.detach())
        return loss
