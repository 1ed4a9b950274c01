"""Codebooks tuned through the differentiable ops: what k-means cannot optimize, the ranking itself.

k-means minimizes the reconstruction error of the database vectors; a search cares about the order of the
distances from queries. ``tune`` fine-tunes a trained index's PQ codebooks with ``ops.soft_quantize`` (hard
codes forward, soft assignment gradients backward: straight-through) against a listwise distillation of the
exact neighbour order: for training queries, the distribution softmax(-||q - x||^2 / T) over candidate
database vectors (their true nearest neighbours and random others) is matched by the one over the
quantized vectors, plus a small reconstruction term that anchors the codewords. For the inner product the
scores are <q, x>. Queries default to a held-apart part of the sample; the tuned codebooks are kept only when
they raise the recall of those held-out queries (``keep="better"``).
"""

from __future__ import annotations

import math

import torch
from tqdm.auto import tqdm

from .. import ops


def _scores(q: torch.Tensor, x: torch.Tensor, metric: str) -> torch.Tensor:
    """Larger is closer: -||q - x||^2 (l2) or <q, x> (ip), [Q, N]."""
    if metric == "ip":
        return q @ x.T
    return -(q.pow(2).sum(1, keepdim=True) - 2 * q @ x.T + x.pow(2).sum(1))


def _straight_through(x: torch.Tensor, C: torch.Tensor, tau: float) -> torch.Tensor:
    soft = ops.soft_quantize(x, C, tau)
    hard = ops.decode(ops.encode(x.detach(), C.detach()), C)
    return hard + (soft - soft.detach())


def recall_on(recon: torch.Tensor, queries: torch.Tensor, truth: torch.Tensor, metric: str, k: int) -> float:
    """k-recall@k of ranking the reconstructions recon [n, d] against the true top-k ``truth`` [Q, >= k]."""
    with torch.no_grad():
        found = _scores(queries, recon, metric).topk(k, dim=1).indices
    hits = (found.unsqueeze(2) == truth[:, :k].unsqueeze(1)).any(2)
    return float(hits.float().mean())


def tune_codebooks(codebooks: torch.Tensor, x: torch.Tensor, metric: str, offsets=None, *,
                   queries: torch.Tensor | None = None, steps: int = 300, batch: int = 64, candidates: int = 256,
                   neighbours: int = 64, lr: float | None = None, tau: float | None = None,
                   temperature: float | None = None, recon: float = 0.3, rank: float = 1.0, k: int = 10, seed: int = 0,
                   keep: str = "better",
                   progress: bool | None = None) -> tuple[torch.Tensor, dict]:
    """Tuned copy of codebooks [M, K, dsub] for database sample x [n, d] (``offsets`` [n, d], e.g. the coarse
    centroid of each vector for residual IVF codes, added to the reconstructions: they quantize x - offsets).
    ``lr`` defaults to 0.03 x the codebooks' standard deviation (Adam), ``recon`` weighs the reconstruction
    anchor against the ranking term (``rank``). Returns (codebooks, report) with the held-out recall@k before
    and after."""
    if keep not in ("better", "always"):
        raise ValueError(f"keep must be 'better' or 'always', got {keep!r}")
    for name, v in (("steps", steps), ("batch", batch), ("candidates", candidates), ("neighbours", neighbours),
                    ("k", k)):
        if not isinstance(v, int) or isinstance(v, bool) or v < 1:
            raise ValueError(f"{name} must be an int >= 1, got {v!r}")
    if lr is not None and not (isinstance(lr, (int, float)) and lr > 0 and math.isfinite(lr)):
        raise ValueError(f"lr must be a finite number > 0, got {lr!r}")
    g = torch.Generator().manual_seed(seed)
    x = x.to(torch.float32)
    off = torch.zeros_like(x) if offsets is None else offsets.to(torch.float32)
    n = x.shape[0]
    if queries is None:  # hold a tenth of the sample apart as queries (at least 20, at most 2000)
        nq = min(2000, max(20, n // 10))
        if n < nq + 2 * neighbours:
            raise ValueError(f"tune needs at least {nq + 2 * neighbours} vectors to hold queries apart, got {n}")
        perm = torch.randperm(n, generator=g)
        queries, keep_rows = x[perm[:nq]], perm[nq:]
        x, off = x[keep_rows], off[keep_rows]
    queries = queries.to(torch.float32)
    n = x.shape[0]
    nb = min(neighbours, n)
    with torch.no_grad():
        truth = torch.cat([_scores(queries[a : a + 256], x, metric).topk(max(nb, k), dim=1).indices
                           for a in range(0, queries.shape[0], 256)])
    held = max(1, queries.shape[0] // 2)  # tune on the first half of the queries, judge on the second
    train_q, train_truth, test_q, test_truth = queries[:held], truth[:held], queries[held:], truth[held:]
    if test_q.shape[0] == 0:
        test_q, test_truth = train_q, train_truth
    C0 = codebooks.detach().to(torch.float32)

    def decoded(C: torch.Tensor) -> torch.Tensor:
        return ops.decode(ops.encode(x - off, C), C) + off

    before = recall_on(decoded(C0), test_q, test_truth, metric, k)
    C = C0.clone().requires_grad_(True)
    opt = torch.optim.Adam([C], lr=lr if lr is not None else 0.03 * float(C0.std().clamp_min(1e-12)))
    with torch.no_grad():  # the temperature of the target and the softness of the assignment, from the data
        s0 = _scores(train_q[: min(64, held)], x[: min(4096, n)], metric)
        T = float(temperature) if temperature else float(s0.std().clamp_min(1e-6)) / 4
        resid = x[: min(4096, n)] - off[: min(4096, n)]
        rec0 = ops.decode(ops.encode(resid, C0), C0)
        t_soft = float(tau) if tau else float(((resid - rec0) ** 2).sum(1).mean().clamp_min(1e-12)) / C0.shape[0]
    for _ in tqdm(range(steps), desc="tune", disable=True if progress is None else not progress, leave=False):
        qi = torch.randint(0, held, (min(batch, held),), generator=g)
        near = train_truth[qi, :nb]  # [B, nb] true neighbours, plus random others shared by the batch
        others = torch.randint(0, n, (candidates,), generator=g)
        rows = torch.cat([near.reshape(-1), others]).unique()
        q, xc, oc = train_q[qi], x[rows], off[rows]
        z = _straight_through(xc - oc, C, t_soft) + oc
        target = torch.softmax(_scores(q, xc, metric) / T, dim=1)
        logp = torch.log_softmax(_scores(q, z, metric) / T, dim=1)
        loss = -rank * (target * logp).sum(1).mean() + recon * ((z - xc) ** 2).sum(1).mean() / max(T, 1e-12)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    C1 = C.detach().contiguous()
    after = recall_on(decoded(C1), test_q, test_truth, metric, k)
    kept = keep == "always" or after > before
    return (C1 if kept else C0.contiguous()), {f"recall@{k}_before": before, f"recall@{k}_after": after,
                                               "kept": kept, "steps": steps, "queries": int(test_q.shape[0])}
