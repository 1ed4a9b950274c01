"""What every training recipe has: a backbone, a quantizer, the paper's optimisation defaults, a loss of
two augmented views (and labels, for supervised methods) and the index its codes are searched with."""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import nn

from ..index import PQIndex


def pq_shape(bits: int, K: int) -> int:
    """Codebooks M for a code of ``bits`` bits with K codewords each (K a power of two dividing the bits)."""
    nbits = K.bit_length() - 1
    if K < 2 or K != 1 << nbits or bits % nbits or bits <= 0:
        raise ValueError(f"bits = {bits} must be a positive multiple of log2(K) = {nbits} (K a power of two)")
    return bits // nbits


OPTIMIZERS = ("adam", "adamw", "sgd")
SCHEDULES = (None, "cosine")
REQUIRED = ("feature_dim", "features", "loss")  # what every recipe defines (checked when its class is created)


class Method(nn.Module):
    """Base of the recipes. A recipe is one module with one subclass and one line in ``METHODS``; it declares

    - ``defaults``: ``optimizer`` (one of ``OPTIMIZERS``), ``lr``, ``weight_decay``, ``schedule`` (``None`` or
      ``"cosine"``), ``warmup`` (fraction of the steps), ``momentum`` (sgd); missing keys take the base's;
    - ``views`` (augmented views per image the loss takes), ``supervised`` (the loss takes labels),
      ``progressive`` (one model serves ``levels`` code lengths: ``index(levels)``);
    - ``feature_dim(*, bits, **kwargs)``: the backbone's output width for these constructor arguments;
    - ``build_args(*, num_classes, in_channels, image_size)``: constructor arguments it needs from the data
      (the hook ``build_method`` calls; none by default);

    and implements ``features`` and ``loss``. Constructors take the backbone, then keywords only."""

    defaults: ClassVar[dict] = {"optimizer": "adam", "lr": 1e-3, "weight_decay": 0.0, "schedule": None, "warmup": 0.0}
    views: ClassVar[int] = 2
    supervised: ClassVar[bool] = False
    progressive: ClassVar[bool] = False

    def __init_subclass__(cls, **kwargs) -> None:
        super().__init_subclass__(**kwargs)
        cls.defaults = {**Method.defaults, **cls.defaults}
        opt, schedule = cls.defaults["optimizer"], cls.defaults["schedule"]
        if opt not in OPTIMIZERS:
            raise TypeError(f"{cls.__name__}.defaults: optimizer {opt!r} is not one of {OPTIMIZERS}")
        if schedule not in SCHEDULES:
            raise TypeError(f"{cls.__name__}.defaults: schedule {schedule!r} is not one of {SCHEDULES}")
        if cls.views not in (1, 2):
            raise TypeError(f"{cls.__name__}.views must be 1 or 2, got {cls.views!r}")
        missing = [n for n in REQUIRED if not any(n in vars(c) for c in cls.__mro__[: cls.__mro__.index(Method)])]
        if missing:
            raise TypeError(f"{cls.__name__} must define {', '.join(missing)} (the Method contract)")

    @classmethod
    def feature_dim(cls, *, bits: int, **kwargs) -> int:
        """Width of the features the backbone must output for ``cls(backbone, bits=bits, **kwargs)``
        (every recipe defines it: checked when the class is created)."""
        raise TypeError("Method.feature_dim is the contract's declaration: call it on a recipe")

    @classmethod
    def build_args(cls, *, num_classes: int, in_channels: int, image_size: int) -> dict:
        """Constructor arguments the recipe takes from the data (e.g. ``num_classes`` for a classifier)."""
        return {}

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The continuous retrieval features [B, d] of images x [B, C, H, W] (defined by every recipe)."""
        raise TypeError("Method.features is the contract's declaration: call it on a recipe")

    def loss(self, xa: torch.Tensor, xb: torch.Tensor | None, labels: torch.Tensor) -> torch.Tensor:
        """The training loss of one batch: view a, view b (None when ``views == 1``), labels (defined by every
        recipe)."""
        raise TypeError("Method.loss is the contract's declaration: call it on a recipe")

    def code_probs(self, feats: torch.Tensor) -> torch.Tensor:
        """Soft code assignments [B, M, K] of features (what the PQ-AG attack pushes away from the clean ones)."""
        return self.pq.probs(feats)

    def start_epoch(self, epoch: int) -> None:
        """Called by the trainer before each epoch (0-based)."""

    @property
    def code_bits(self) -> int:
        return self.pq.M * (self.pq.K.bit_length() - 1)

    def encode(self, feats: torch.Tensor) -> torch.Tensor:
        return self.pq.encode(feats)

    def index(self):
        """An empty index over the learned codewords (``add_codes`` then ``search``)."""
        return PQIndex.from_quantizer(self.pq)
