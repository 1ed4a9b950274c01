"""Losses of the self-supervised quantization methods (shapes: features [B, d], probabilities [B, M, K])."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .crossdevice import gather, pair_rows


def nt_xent(a: torch.Tensor, b: torch.Tensor, tau: float = 0.5, *, cross_device: bool = False) -> torch.Tensor:
    """NT-Xent (SimCLR) between two views a, b [B, d]: each row's positive is its twin in the other view,
    the 2B - 2 other rows are negatives; cosine similarity / tau; mean over the 2B rows. ``cross_device``:
    the rows of every rank are negatives too (:mod:`sqret.crossdevice`; 2N - 2 negatives for N rows in all)."""
    rows, anchors, positives = pair_rows(a, b, cross_device)
    z = F.normalize(rows, dim=1)
    sim = z[anchors] @ z.T / tau  # [2B, 2N]
    sim = sim.masked_fill(anchors[:, None] == torch.arange(z.shape[0], device=z.device), float("-inf"))
    return F.cross_entropy(sim, positives)


def multinoulli_contrastive(q: torch.Tensor, keys: torch.Tensor, tau: float = 1.0, *,
                            labels: torch.Tensor | None = None, cross_device: bool = False) -> torch.Tensor:
    """MoPQ's Multinoulli Contrastive Loss: query i [B, d] against keys [B, d] (the *quantized* keys), key i
    its match: mean over queries of -log softmax_j(<q_i, key_j> / tau)[i], the negative log-probability that
    the query is matched with its own key after quantization. ``labels`` [B]: keys of the query's label other
    than its own are left out of its softmax (same-label pairs are not negatives). ``cross_device``: the keys
    of every rank are candidates too (:mod:`sqret.crossdevice`: differentiable cross-device sampling)."""
    B = q.shape[0]
    first = 0
    if cross_device:
        keys, first = gather(keys)
        if labels is not None:
            labels = gather(labels)[0]
    own = torch.arange(first, first + B, device=q.device)
    logits = q @ keys.T / tau  # [B, N]
    if labels is not None:
        local = labels[first:first + B] if cross_device else labels
        cols = torch.arange(keys.shape[0], device=q.device)
        logits = logits.masked_fill((local[:, None] == labels[None, :]) & (cols != own[:, None]), float("-inf"))
    return F.cross_entropy(logits, own)


def cross_quantized_contrastive(xa, za, xb, zb, tau: float = 0.5, *, cross_device: bool = False) -> torch.Tensor:
    """SPQ: NT-Xent(X_a, Z_b) + NT-Xent(X_b, Z_a): features of one view against quantized features of the other."""
    return nt_xent(xa, zb, tau, cross_device=cross_device) + nt_xent(xb, za, tau, cross_device=cross_device)


def codeword_diversity(probs: torch.Tensor) -> torch.Tensor:
    """Negative entropy of the batch-mean assignment per codebook, averaged over codebooks: minimising it
    spreads the batch over all codewords. probs [B, M, K]."""
    pbar = probs.mean(0)
    return (pbar * torch.log(pbar.clamp_min(1e-12))).sum(-1).mean()


def debiased_contrastive(a: torch.Tensor, b: torch.Tensor, tau: float = 0.4, pos_prior: float = 0.1,
                         memory: torch.Tensor | None = None, *, cross_device: bool = False) -> torch.Tensor:
    """Debiased contrastive loss (Chuang et al. 2020, as used by MeCoQ) of two views a, b [B, d], with
    optional extra negatives ``memory`` [S, d]. Cosine similarities / tau; for each of the 2B anchors with
    positive score P = exp(s+) and negative scores n_j = exp(s_j) (N of them):
    Ng = max((sum_j n_j - N * pos_prior * P) / (1 - pos_prior), N * exp(-1 / tau)),
    loss = mean(-log(P / (P + Ng))). ``pos_prior`` = 0 gives NT-Xent with the memory as negatives.
    ``cross_device``: the rows of every rank are negatives too (:mod:`sqret.crossdevice`)."""
    rows, anchors, positives = pair_rows(a, b, cross_device)
    z = F.normalize(rows, dim=1)
    sim = z[anchors] @ z.T / tau  # [2B, 2N]
    pos = sim.gather(1, positives[:, None])[:, 0]
    cols = torch.arange(z.shape[0], device=z.device)
    neg = sim.masked_fill((cols == anchors[:, None]) | (cols == positives[:, None]), float("-inf"))
    z = z[anchors]
    if memory is not None and memory.shape[0]:
        neg = torch.cat([neg, z @ F.normalize(memory, dim=1).T / tau], 1)
    N = rows.shape[0] - 2 + (0 if memory is None else memory.shape[0])
    if N == 0:
        return sim.sum() * 0
    # all in log space (log P = pos, log sum_j n_j = lse), so a small tau neither overflows nor underflows
    lse = torch.logsumexp(neg, 1)
    if pos_prior > 0:
        r = (math.log(N * pos_prior) + pos - lse).clamp(max=-1e-6)  # log(N pi P / sum n); >= 0 means A <= 0
        log_a = lse + torch.log1p(-torch.exp(r)) - math.log(1 - pos_prior)
        log_a = torch.where(math.log(N * pos_prior) + pos - lse < 0, log_a, torch.full_like(log_a, float("-inf")))
    else:
        log_a = lse
    log_ng = torch.clamp(log_a, min=math.log(N) - 1 / tau)
    return (torch.logaddexp(pos, log_ng) - pos).mean()


def consistent_contrastive(ua: torch.Tensor, ub: torch.Tensor, tau: float = 0.2) -> torch.Tensor:
    """Consistency of the two views' similarity distributions over shared negatives (HQC / SSCQ): for sample
    i, the negatives are the 2B - 2 embeddings of the other samples in both views, the same set for both
    anchors; p_i = softmax(cos(ua_i, n) / tau) and q_i = softmax(cos(ub_i, n) / tau) over them;
    loss = mean_i (KL(p_i || q_i) + KL(q_i || p_i)) / 2. ua, ub [B, d]."""
    B = ua.shape[0]
    a, b = F.normalize(ua, dim=1), F.normalize(ub, dim=1)
    both = torch.cat([a, b])  # [2B, D]
    own = torch.eye(B, dtype=torch.bool, device=ua.device).repeat(1, 2)  # [B, 2B]: sample i in either view
    logp = lambda x: F.log_softmax((x @ both.T / tau).masked_fill(own, -1e9), 1)  # noqa: E731  (finite: no 0*inf)
    la, lb = logp(a), logp(b)
    pa, pb = la.exp(), lb.exp()
    kl = lambda p, lp, lq: (p * (lp - lq)).masked_fill(own, 0).sum(1)  # noqa: E731
    return ((kl(pa, la, lb) + kl(pb, lb, la)) / 2).mean()


def part_neighbour_consistency(sa: torch.Tensor, sb: torch.Tensor, tau: float = 0.5, k: int = 20) -> torch.Tensor:
    """Part-neighbour consistency (HQC / SSCQ) of sub-vectors of two views sa, sb [B, M, d]: for each
    codebook m and anchor i of one view, the positives are its twin in the other view and the other view's
    ``k`` nearest neighbours of that twin (cosine, in sub-space m, found without gradient: pseudo-positives);
    loss = -mean over positives of log softmax_j(cos(anchor, other_j) / tau); averaged over both
    directions, anchors and codebooks."""
    B, M, _ = sa.shape
    k = max(0, min(k, B - 1))
    a, b = F.normalize(sa, dim=-1).transpose(0, 1), F.normalize(sb, dim=-1).transpose(0, 1)  # [M, B, d]
    eye = torch.eye(B, dtype=torch.bool, device=sa.device)

    def one_way(x, y):
        with torch.no_grad():
            yy = (y @ y.transpose(1, 2)).masked_fill(eye, float("-inf"))
            pos = torch.zeros(M, B, B, dtype=x.dtype, device=x.device)
            if k:
                pos.scatter_(2, yy.topk(k, dim=2).indices, 1.0)
            pos = pos + eye
        logp = F.log_softmax(x @ y.transpose(1, 2) / tau, dim=2)
        return (-(logp * pos).sum(2) / pos.sum(2)).mean()

    return (one_way(a, b) + one_way(b, a)) / 2


def assignment_entropy(probs: torch.Tensor) -> torch.Tensor:
    """Mean per-sample entropy of soft assignments probs [B, M, K] (MeCoQ's entropy regularizer: minimising
    it makes each assignment confident, so soft and hard codes agree)."""
    return -(probs * torch.log(probs.clamp_min(1e-12))).sum(-1).mean()


def codeword_similarity(codewords: torch.Tensor) -> torch.Tensor:
    """Mean cosine similarity between all pairs of codewords of each codebook [M, K, dsub] (MeCoQ's codeword
    regularizer: minimising it spreads the codewords)."""
    c = F.normalize(codewords, dim=-1)
    return (c @ c.transpose(1, 2)).mean()


def center_loss(x: torch.Tensor, labels: torch.Tensor, centers: torch.Tensor) -> torch.Tensor:
    """Mean squared distance of features x [B, d] to their class centers [C, d] (DPQ's central loss)."""
    return ((x - centers[labels]) ** 2).sum(1).mean()
