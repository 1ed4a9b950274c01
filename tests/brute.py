"""NumPy float64 brute force: the independent ground truth the ops are tested against."""

import numpy as np


def normalize(a):
    return a / np.maximum(np.linalg.norm(a, axis=-1, keepdims=True), 1e-12)


def scores(x, C, metric):
    """[B, M, K], larger is closer."""
    B = x.shape[0]
    M, K, d = C.shape
    xs = x.reshape(B, M, d)
    if metric == "cos":
        xs, C = normalize(xs), normalize(C)
    if metric == "l2":
        return -((xs[:, :, None, :] - C[None]) ** 2).sum(-1)
    return np.einsum("bmd,mkd->bmk", xs, C)


def probs(x, C, tau, metric):
    s = scores(x, C, metric) / tau
    e = np.exp(s - s.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def soft_quantize(x, C, tau, metric):
    Cw = normalize(C) if metric == "cos" else C
    return np.einsum("bmk,mkd->bmd", probs(x, C, tau, metric), Cw).reshape(x.shape)


def lut(q, C, metric):
    if metric in ("l2", "l2_sqrt"):
        t = -scores(q, C, "l2")
        return np.sqrt(t) if metric == "l2_sqrt" else t
    return scores(q, C, metric)


def adc_topk(table, codes, k, largest):
    """Values and positions, ties by smaller position, padded with inf / -1."""
    Q, M, K = table.shape
    N = codes.shape[0]
    dist = np.zeros((Q, N))
    for m in range(M):
        dist += table[:, m, codes[:, m].astype(np.int64)]
    order = np.argsort(-dist if largest else dist, axis=1, kind="stable")[:, :k]
    vals = np.take_along_axis(dist, order, axis=1)
    pad = k - order.shape[1]
    fill = -np.inf if largest else np.inf
    vals = np.concatenate([vals, np.full((Q, pad), fill)], axis=1)
    ids = np.concatenate([order, np.full((Q, pad), -1)], axis=1)
    return vals, ids


def rel_err(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-30)) if b.size else 0.0
