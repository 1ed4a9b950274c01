"""Datasets and vector files: bundled digits (the embedded default), TEXMEX .fvecs/.bvecs/.ivecs."""

from .digits import RetrievalSplit, load_digits_split
from .vecs import read_bvecs, read_fvecs, read_ivecs, read_vectors

__all__ = ["RetrievalSplit", "load_digits_split", "read_bvecs", "read_fvecs", "read_ivecs", "read_vectors"]
