"""Vector file readers, PQ k-means, and the retrieval metrics against direct formulas."""

import numpy as np
import pytest
import torch

from sqret import ops
from sqret.cluster import train_pq
from sqret.data import load_digits_split, read_bvecs, read_fvecs, read_ivecs, read_vectors
from sqret.eval import mean_average_precision, nn_recall_at_k, recall_at_k


def test_readers_on_real_files(data_dir):
    base = read_fvecs(data_dir / "siftsmall" / "siftsmall_base.fvecs")
    queries = read_fvecs(data_dir / "siftsmall" / "siftsmall_query.fvecs", mmap=True)
    gt = read_ivecs(data_dir / "siftsmall" / "siftsmall_groundtruth.ivecs")
    assert base.shape == (10000, 128) and base.dtype == np.float32
    assert queries.shape == (100, 128) and gt.shape == (100, 100)
    d = ((queries[:5, None, :].astype(np.float64) - base[None]) ** 2).sum(-1)
    assert np.allclose(d[np.arange(5), gt[:5, 0]], d.min(1))  # the ground truth is the true nearest
    big = read_bvecs(data_dir / "bigann10k" / "bigann10k_base.bvecs", mmap=True)
    assert big.shape == (10000, 128) and big.dtype == np.uint8


def test_reader_rejects_bad_files(tmp_path):
    good = tmp_path / "a.fvecs"
    rows = np.hstack([np.full((3, 1), 4, np.int32), np.arange(12, dtype=np.float32).view(np.int32).reshape(3, 4)])
    rows.tofile(good)
    np.testing.assert_array_equal(read_fvecs(good), np.arange(12, dtype=np.float32).reshape(3, 4))
    (tmp_path / "t.fvecs").write_bytes(good.read_bytes()[:-3])
    with pytest.raises(ValueError, match="not a .fvecs file"):
        read_fvecs(tmp_path / "t.fvecs")
    mixed = rows.copy()
    mixed[1, 0] = 3
    mixed.tofile(tmp_path / "m.fvecs")
    with pytest.raises(ValueError, match="different dimensions"):
        read_fvecs(tmp_path / "m.fvecs")
    with pytest.raises(ValueError, match="unknown vector file type"):
        read_vectors(tmp_path / "x.txt")
    np.save(tmp_path / "v.npy", np.eye(3, dtype=np.float32))
    assert read_vectors(tmp_path / "v.npy", mmap=True).shape == (3, 3)


def _ap_loop(rel):
    hits, total = 0, 0.0
    for i, r in enumerate(rel, 1):
        if r:
            hits += 1
            total += hits / i
    return total / hits if hits else 0.0


def test_map_and_recall_against_direct_loops():
    rng = np.random.default_rng(0)
    ql, dbl = rng.integers(0, 4, 30), rng.integers(0, 4, 200)
    ranked = np.stack([rng.permutation(200) for _ in range(30)])
    ranked[3, 150:] = -1  # padding never counts as relevant
    expected = np.mean([_ap_loop([r >= 0 and dbl[r] == ql[q] for r in ranked[q, :50]]) for q in range(30)])
    t = torch.from_numpy
    got = mean_average_precision(t(ql), t(dbl), t(ranked), 50)
    assert got == pytest.approx(expected, abs=1e-6)
    multi = np.eye(4, dtype=np.int64)  # multi-hot labels give the same answer as class ids
    assert mean_average_precision(t(multi[ql]), t(multi[dbl]), t(ranked), 50) == pytest.approx(expected, abs=1e-6)
    truth = np.stack([rng.permutation(200)[:10] for _ in range(30)])
    found = truth.copy()
    found[:, 5:] = -1
    assert recall_at_k(t(found), t(truth), 10) == pytest.approx(0.5)
    assert nn_recall_at_k(t(found), t(truth), 1) == 1.0
    with pytest.raises(ValueError, match="fewer than k"):
        recall_at_k(t(found), t(truth[:, :5]), 10)


def test_train_pq_recovers_clusters_and_beats_random_codebooks():
    g = torch.Generator().manual_seed(0)
    centers = torch.randn(2, 6, 3, generator=g) * 10  # M = 2 sub-spaces, 6 true clusters each
    assign = torch.randint(0, 6, (600, 2), generator=g)
    x = torch.cat([centers[m, assign[:, m]] for m in range(2)], dim=1) + 0.01 * torch.randn(600, 6, generator=g)
    C = train_pq(x, 2, 6, iters=20, progress=False)
    err = (ops.decode(ops.encode(x, C), C) - x).square().sum(1).mean()
    rand = x[torch.randperm(600, generator=g)[:6]].view(6, 2, 3).transpose(0, 1).contiguous()
    assert err < 0.01 and err < (ops.decode(ops.encode(x, rand), rand) - x).square().sum(1).mean()
    Ccos = train_pq(x, 2, 6, metric="cos", iters=5, progress=False)
    assert torch.allclose(Ccos.norm(dim=-1), torch.ones(2, 6))


def test_train_pq_handles_empty_clusters_and_bad_input():
    x = torch.zeros(20, 4)
    x[:10] = 1.0  # only 2 distinct points for K = 8: empty clusters are re-seeded, nothing is NaN
    C = train_pq(x, 2, 8, iters=3, progress=False)
    assert torch.isfinite(C).all()
    with pytest.raises(ValueError, match="not divisible"):
        train_pq(torch.randn(10, 5), 2, 4)
    with pytest.raises(ValueError, match="at least K training vectors"):
        train_pq(torch.randn(10, 4), 2, 16)


def test_digits_split_is_disjoint_and_balanced():
    s = load_digits_split(queries_per_class=20)
    assert s.queries.shape == (200, 64) and s.database.shape == (1597, 64)
    assert torch.bincount(s.query_labels).tolist() == [20] * 10
