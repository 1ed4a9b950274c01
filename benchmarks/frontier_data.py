"""The real data sets of the recall-QPS frontier benchmark, as (base [N, d], queries [Q, d], ground truth
[Q, >= 100] int64) float32 arrays: siftsmall, bigann10k, fmnistsmall (their own ground truth) and CIFAR-10
pixels (PCA to 128-d fitted on the 50,000 training images; the first 100 test images of each class, 1,000
in all, as queries; ground truth by exact search), cached under sqret's cache folder."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

DATA = Path(os.environ.get("SQRET_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
SETS = ("siftsmall", "bigann10k", "fmnistsmall", "cifar10pca")


def exact_knn(base: np.ndarray, queries: np.ndarray, k: int = 100) -> np.ndarray:
    import faiss

    index = faiss.IndexFlatL2(base.shape[1])
    index.add(np.ascontiguousarray(base, dtype=np.float32))
    return index.search(np.ascontiguousarray(queries, dtype=np.float32), k)[1].astype(np.int64)


def load(name: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    from sqret.data import read_bvecs, read_fvecs, read_ivecs

    if name == "siftsmall":
        d = DATA / "siftsmall"
        return (read_fvecs(d / "siftsmall_base.fvecs"), read_fvecs(d / "siftsmall_query.fvecs"),
                read_ivecs(d / "siftsmall_groundtruth.ivecs").astype(np.int64))
    if name == "bigann10k":
        d = DATA / "bigann10k"
        base = read_bvecs(next(d.glob("*base*.bvecs"))).astype(np.float32)
        queries = read_bvecs(next(d.glob("*query*.bvecs"))).astype(np.float32)
        return base, queries, read_ivecs(next(d.glob("*groundtruth*.ivecs"))).astype(np.int64)
    if name == "fmnistsmall":
        d = DATA / "fmnistsmall"
        base = read_fvecs(next(d.glob("*base*.fvecs")))
        queries = read_fvecs(next(d.glob("*query*.fvecs")))
        return base, queries, read_ivecs(next(d.glob("*groundtruth*.ivecs"))).astype(np.int64)
    if name == "cifar10pca":
        return _cifar_pca()
    raise ValueError(f"unknown data set {name!r}; expected one of {SETS}")


def _cifar_pca() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    from sqret.data.images import cache_dir, load_cifar10

    cached = cache_dir() / "cifar10_pca128_frontier.npz"
    if cached.exists():
        z = np.load(cached)
        return z["base"], z["queries"], z["gt"]
    split = load_cifar10(DATA / "cifar10-jpeg.tar.gz", queries_per_class=100, val_per_class=0, progress=False)
    base = split.database.reshape(len(split.database), -1).numpy().astype(np.float32) / 255.0
    queries = split.queries.reshape(len(split.queries), -1).numpy().astype(np.float32) / 255.0
    mean = base.mean(0)
    cov = np.cov((base - mean).T.astype(np.float64))
    w, v = np.linalg.eigh(cov)
    proj = v[:, np.argsort(w)[::-1][:128]].astype(np.float32)
    base, queries = (base - mean) @ proj, (queries - mean) @ proj
    gt = exact_knn(base, queries)
    cached.parent.mkdir(parents=True, exist_ok=True)
    np.savez(cached, base=base, queries=queries, gt=gt)
    return base, queries, gt
