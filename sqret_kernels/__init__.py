"""Triton kernels and their launchers, one module per op family.

This package knows nothing of ``sqret``: no ``torch.library`` code lives here. ``sqret.ops`` registers
these launchers as the ``triton`` backend.
"""
