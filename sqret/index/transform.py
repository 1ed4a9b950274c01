"""Rotations in front of an index (FAISS's IndexPreTransform): x -> x @ R with R [d_in, d_out] orthonormal
columns, trained on a sample and saved with the index.

- ``RandomRotation`` (FAISS RR): a random orthogonal matrix (balances variance across sub-spaces on average).
- ``PCAMatrix`` (FAISS PCA / PCAR): the d_out principal directions; ``balance`` (default) permutes them so
  that each of the M product sub-spaces gets about the same share of the variance (the eigenvalue
  allocation of Ge et al., Optimized Product Quantization, 2013), ``rotate=True`` (PCAR) follows the
  projection with a random rotation instead.
- ``OPQMatrix`` (FAISS OPQ{M}_{d_out}): the rotation learned alternately with the PQ codebooks (Procrustes
  on the codes' reconstructions, then k-means), from the balanced PCA.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from .. import ops
from ..cluster import train_pq
from .base import Index, as_ids
from .storage import IndexFile, IndexFileError, Meta

TRANSFORMS = ("random", "pca", "pcar", "opq")


def _orthonormal(d_in: int, d_out: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    q, r = torch.linalg.qr(torch.randn(d_in, d_in, generator=g, dtype=torch.float64))
    q = q * torch.sign(torch.diagonal(r))[None, :]  # a uniformly random orthogonal matrix
    return q[:, :d_out]


def _principal(x: torch.Tensor, d_out: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(eigenvalues [d_out] descending, directions [d_in, d_out]) of the covariance of x."""
    x = x.to(torch.float64)
    c = x - x.mean(0)
    w, v = torch.linalg.eigh(c.T @ c / max(1, x.shape[0] - 1))
    order = torch.argsort(w, descending=True)[:d_out]
    return w[order].clamp_min(0), v[:, order]


def balanced_order(eigenvalues: torch.Tensor, M: int) -> torch.Tensor:
    """A permutation of the d_out directions into M sub-spaces of d_out / M each, greedily balancing the
    product of the eigenvalues per sub-space (largest first, into the open sub-space of smallest log-product)."""
    d = eigenvalues.shape[0]
    dsub = d // M
    logs = torch.log(eigenvalues.clamp_min(1e-30)).tolist()
    buckets: list[list[int]] = [[] for _ in range(M)]
    score = [0.0] * M
    for j in sorted(range(d), key=lambda i: -logs[i]):
        b = min((m for m in range(M) if len(buckets[m]) < dsub), key=lambda m: (score[m], m))
        buckets[b].append(j)
        score[b] += logs[j]
    return torch.tensor([j for b in buckets for j in b], dtype=torch.int64)


@dataclass(frozen=True)
class Transform:
    """A trained rotation: ``kind`` (one of TRANSFORMS), R [d_in, d_out] float32 (orthonormal columns)."""

    kind: str
    d_in: int
    d_out: int
    R: torch.Tensor

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        return x @ self.R

    def reverse(self, y: torch.Tensor) -> torch.Tensor:
        """The least-squares inverse (exact when d_out = d_in)."""
        return y @ self.R.T


def train_transform(kind: str, x: torch.Tensor, d_out: int, M: int, *, seed: int = 0, iters: int = 20,
                    pq_nbits: int = 8, progress: bool | None = None) -> Transform:
    """Train a rotation of x [n, d_in] to d_out dims (M: the PQ sub-spaces it serves)."""
    d_in = x.shape[1]
    if kind not in TRANSFORMS:
        raise ValueError(f"transform must be one of {TRANSFORMS}, got {kind!r}")
    if not 1 <= d_out <= d_in or d_out % M:
        raise ValueError(f"output dimension {d_out} must be in [1, d = {d_in}] and divisible by M = {M}")
    if kind == "random":
        return Transform(kind, d_in, d_out, _orthonormal(d_in, d_out, seed).to(torch.float32).contiguous())
    if x.shape[0] < 2:
        raise ValueError(f"training a {kind} transform needs at least 2 vectors, got {x.shape[0]}")
    w, v = _principal(x, d_out)
    if kind == "pcar":
        R = v @ _orthonormal(d_out, d_out, seed)
        return Transform(kind, d_in, d_out, R.to(torch.float32).contiguous())
    R = v[:, balanced_order(w, M)]
    if kind == "pca":
        return Transform(kind, d_in, d_out, R.to(torch.float32).contiguous())
    # OPQ: alternate the codebooks (k-means, warm-started) and the rotation (orthogonal Procrustes)
    X = x.to(torch.float64)
    K = 1 << pq_nbits
    codebooks = None
    for _ in tqdm(range(iters), desc="OPQ", disable=True if progress is None else not progress, leave=False):
        Y = (X @ R).to(torch.float32)
        codebooks = train_pq(Y, M, K, iters=4, seed=seed, progress=False, init=codebooks)
        rec = ops.decode(ops.encode(Y, codebooks), codebooks).to(torch.float64)
        u, _, vh = torch.linalg.svd(X.T @ rec, full_matrices=False)  # argmax tr(R^T X^T rec), R^T R = I
        R = u @ vh
    return Transform(kind, d_in, d_out, R.to(torch.float32).contiguous())


@dataclass(frozen=True, eq=False)
class _State:
    transform: Transform | None
    base: object  # the base index's state


class PreTransformIndex(Index):
    """``transform`` (a kind of TRANSFORMS, trained in ``train``) applied to vectors and queries before
    ``base`` (of dimension d_out). Search parameters are the base's."""

    kind = "pretransform"

    def __init__(self, d: int, transform: str, base: Index, *, M: int | None = None, seed: int = 0):
        if not isinstance(base, Index):
            raise TypeError(f"base must be a sqret index, got {type(base).__name__}")
        if transform not in TRANSFORMS:
            raise ValueError(f"transform must be one of {TRANSFORMS}, got {transform!r}")
        if not isinstance(d, int) or d < base.d:
            raise ValueError(f"the input dimension d = {d!r} must be an int >= the base's d = {base.d}")
        if len(base):
            raise ValueError("the base index must be empty")
        self.d, self.transform, self.base, self.metric, self.seed = d, transform, base, base.metric, seed
        self.M = M if M is not None else getattr(base, "M", 1)
        if base.d % self.M:
            raise ValueError(f"M = {self.M} does not divide the base's d = {base.d}")
        self._init_index()
        self._state = _State(None, base._state)

    @property
    def d_out(self) -> int:
        return self.base.d

    def _set_state(self, s: _State) -> None:
        self.base._set_state(s.base)
        self._state = s

    def _count(self, s: _State) -> int:
        return self.base._count(s.base)

    def _trained(self, s: _State) -> bool:
        return s.transform is not None and self.base._trained(s.base)

    def _sources(self, s: _State) -> list:
        return self.base._sources(s.base)

    def _train(self, x: torch.Tensor, *, iters: int, seed: int, progress) -> _State:
        t = train_transform(self.transform, x, self.d_out, self.M, seed=self.seed + seed, progress=progress,
                            pq_nbits=getattr(self.base, "nbits", 8))
        return _State(t, self.base._train(t.apply(x), iters=iters, seed=seed, progress=progress))

    def _add_to(self, s: _State, x: torch.Tensor, ids) -> _State:
        return _State(s.transform, self.base._add_to(s.base, s.transform.apply(x), ids))

    def _remove_from(self, s: _State, ids: torch.Tensor) -> tuple[_State, int]:
        base, n = self.base._remove_from(s.base, ids)
        return _State(s.transform, base), n

    def _emptied(self, s: _State) -> _State:
        return _State(s.transform, self.base._emptied(s.base))

    def _search_in(self, s: _State, q: torch.Tensor, k: int, **params) -> tuple[torch.Tensor, torch.Tensor]:
        return self.base._search_in(s.base, s.transform.apply(q), k, **params)

    def _candidates(self, s: _State, q: torch.Tensor, k: int, **params) -> torch.Tensor:
        return self.base._candidates(s.base, s.transform.apply(q), k, **params)

    def _tune(self, x: torch.Tensor, options: dict) -> dict:
        s = self._state
        if "queries" in options and options["queries"] is not None:
            options = {**options, "queries": s.transform.apply(options["queries"].to(torch.float32))}
        report = self.base._tune(s.transform.apply(x), options)
        with self._lock:
            self._set_state(_State(s.transform, self.base._state))
        return report

    def search_parameters(self) -> tuple[str, ...]:
        return self.base.search_parameters()

    def reconstruct(self, ids) -> torch.Tensor:
        s = self._ready()
        return s.transform.reverse(self.base.reconstruct(as_ids(ids)))

    @property
    def matrix(self) -> torch.Tensor | None:
        t = self._state.transform
        return None if t is None else t.R

    # ------------------------------------------------------------------ persistence

    def _meta(self, s: _State) -> dict:
        return {"kind": self.kind, "d": self.d, "metric": self.metric, "transform": self.transform, "M": self.M,
                "seed": self.seed, "ntotal": self._count(s), "base": self.base._meta(s.base)}

    def _write(self, s: _State, w, prefix: str, progress) -> None:
        self.base._write(s.base, w, prefix + "base.", progress)
        w.add(prefix + "transform.matrix", s.transform.R.numpy())

    @classmethod
    def _schema(cls, f: IndexFile, meta: Meta, prefix: str) -> dict:
        from . import kind_of

        base_meta = meta.sub("base")
        schema = kind_of(f, base_meta)._schema(f, base_meta, prefix + "base.")
        d, d_out = meta.int("d", 1, 1 << 20), base_meta.int("d", 1, 1 << 20)
        schema[prefix + "transform.matrix"] = ("<f4", (d, d_out))
        return schema

    @classmethod
    def _read(cls, f: IndexFile, meta: Meta, prefix: str) -> PreTransformIndex:
        from . import kind_of
        from .base import finite_section

        base_meta = meta.sub("base")
        base = kind_of(f, base_meta)._read(f, base_meta, prefix + "base.")
        base_state = base._state
        base._state = base._emptied(base_state)
        kind, d = meta.choice("transform", TRANSFORMS), meta.int("d", 1, 1 << 20)
        if meta.choice("metric", ("l2", "ip")) != base.metric:
            raise IndexFileError(f"{f.path}: meta field 'metric' differs from the base index's")
        index = cls(d, kind, base, M=meta.int("M", 1, 1 << 16), seed=meta.int("seed", 0, 1 << 62))
        if meta.int("ntotal", 0) != base._count(base_state):
            raise IndexFileError(f"{f.path}: meta field {meta.name('ntotal')} differs from the base index's")
        R = finite_section(f, f.array(prefix + "transform.matrix"), prefix + "transform.matrix")
        index._set_state(_State(Transform(kind, d, base.d, R), base_state))
        index.readonly = f.mmap
        return index



