"""sqret: kernel-accelerated deep product quantization and retrieval.

``sqret.ops`` holds the six ops (``soft_quantize``, ``assign_probs``, ``encode``, ``decode``,
``build_lut``, ``adc_topk``) and chooses their backend; see ``sqret.backends()`` and ``sqret.explain``.
"""

from . import ops
from .ops import backends, explain, get_backend, set_backend, use_backend

__version__ = "0.1.0"
__all__ = ["backends", "explain", "get_backend", "ops", "set_backend", "use_backend", "__version__"]
