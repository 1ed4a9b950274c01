"""Training recipes (model + losses + the defaults of each paper's code). Only SPQ so far."""

from .spq import SPQ

METHODS = {"spq": SPQ}

__all__ = ["METHODS", "SPQ"]
