"""Training recipes: model + losses + the defaults of each paper's code.

``build_method(name, ...)`` makes one from its name, the code length and the backbone, and records the
arguments (``method.spec``) so that a checkpoint can rebuild it (``sqret eval``)."""

from __future__ import annotations

from ..models import build_backbone
from .base import OPTIMIZERS, Method
from .dpq import DPQ
from .mecoq import MeCoQ
from .mopq import MoPQ
from .phpq import PHPQ
from .spq import SPQ
from .sscq import SSCQ

METHODS = {"spq": SPQ, "sscq": SSCQ, "dpq": DPQ, "mecoq": MeCoQ, "mopq": MoPQ, "phpq": PHPQ}


def build_method(name: str, bits: int = 32, backbone: str = "small", in_channels: int = 3, image_size: int = 32,
                 num_classes: int = 10, weights=None, width: int = 32, **kwargs) -> Method:
    """A recipe by name (``METHODS``) at ``bits`` bits on a named backbone (``sqret.models.BACKBONES``);
    ``kwargs`` go to the recipe's constructor."""
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}; expected one of {sorted(METHODS)}")
    cls = METHODS[name]
    if "sub_dim" in kwargs:  # the name checkpoints written before dsub carry
        kwargs["dsub"] = kwargs.pop("sub_dim")
    kwargs = {**cls.build_args(num_classes=num_classes, in_channels=in_channels, image_size=image_size), **kwargs}
    net = build_backbone(backbone, cls.feature_dim(bits=bits, **kwargs), in_channels, image_size, weights, width)
    method = cls(net, bits=bits, **kwargs)
    method.spec = {"name": name, "bits": bits, "backbone": backbone, "in_channels": in_channels,
                   "image_size": image_size, "num_classes": num_classes, "width": width, **kwargs}
    return method


__all__ = ["DPQ", "METHODS", "MeCoQ", "MoPQ", "Method", "PHPQ", "OPTIMIZERS", "SPQ", "SSCQ", "build_method"]
