"""PQIndex / IVFPQIndex: recall on real data beside FAISS, persistence (mmap, corruption, atomicity),
remove, ids, FAISS interop, distributed search over real torchrun processes, CLI, clear errors."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from sqret.eval import nn_recall_at_k
from sqret.index import IndexFileError, IVFPQIndex, PQIndex, load, storage
from sqret.index.faiss_io import from_faiss, to_faiss

HERE = Path(__file__).parent


def _data(n=3000, d=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    centers = torch.randn(20, d, generator=g) * 3
    x = centers[torch.randint(0, 20, (n,), generator=g)] + torch.randn(n, d, generator=g)
    return x, torch.randn(25, d, generator=g) * 3


def _built(kind, metric="l2", nbits=8, ids=None):
    x, q = _data()
    index = PQIndex(32, 8, nbits, metric) if kind == "pq" else IVFPQIndex(32, 16, 8, nbits, metric)
    index.train(x, iters=8, progress=False)
    index.add(x, ids)
    return index, x, q


def _search(index, q, k=10):
    return index.search(q, k, nprobe=4) if isinstance(index, IVFPQIndex) else index.search(q, k)


CASES = [("pq", "l2", 8), ("pq", "l2", 4), ("pq", "ip", 8), ("ivf", "l2", 8), ("ivf", "ip", 8), ("ivf", "l2", 4)]


@pytest.fixture(scope="module")
def sift(data_dir):
    from sqret.data import read_fvecs, read_ivecs

    d = data_dir / "siftsmall"
    return (read_fvecs(d / "siftsmall_base.fvecs"), read_fvecs(d / "siftsmall_query.fvecs"),
            torch.from_numpy(read_ivecs(d / "siftsmall_groundtruth.ivecs").astype(np.int64)))


def test_siftsmall_recall_at_least_faiss(sift):
    import faiss

    base, q, gt = sift
    ours = PQIndex(128, 16).train(base, progress=False)
    ours.add(base)
    theirs = faiss.IndexPQ(128, 16, 8)
    theirs.train(base)
    theirs.add(base)
    r_ours = nn_recall_at_k(ours.search(q, 100)[1], gt, 100)
    r_faiss = nn_recall_at_k(torch.from_numpy(theirs.search(q, 100)[1]), gt, 100)
    assert r_ours >= r_faiss - 0.01, (r_ours, r_faiss)
    ivf = IVFPQIndex(128, 64, 16).train(base, progress=False)
    ivf.add(base)
    recalls = [nn_recall_at_k(ivf.search(q, 100, nprobe=p)[1], gt, 100) for p in (1, 4, 64)]
    assert recalls[0] <= recalls[1] <= recalls[2] and recalls[2] >= r_faiss - 0.02, recalls


@pytest.mark.parametrize("kind,metric,nbits", CASES)
def test_save_load_round_trip_including_mmap(tmp_path, kind, metric, nbits):
    index, x, q = _built(kind, metric, nbits)
    D, I = _search(index, q)
    index.save(tmp_path / "a.sqret")
    for mmap in (False, True):
        back = load(tmp_path / "a.sqret", mmap=mmap)
        assert type(back) is type(index) and len(back) == len(index) and back.readonly == mmap
        D2, I2 = _search(back, q)
        assert torch.equal(I, I2) and torch.equal(D, D2)
    with pytest.raises(RuntimeError, match="read-only"):
        load(tmp_path / "a.sqret", mmap=True).add(x[:3])
    with pytest.raises(IndexFileError, match="not a PQIndex|not a IVFPQIndex"):
        (IVFPQIndex if kind == "pq" else PQIndex).load(tmp_path / "a.sqret")


def test_corrupted_truncated_and_foreign_files(tmp_path):
    index, _, _ = _built("ivf")
    path = tmp_path / "a.sqret"
    index.save(path)
    raw = bytearray(path.read_bytes())
    codes = storage.IndexFile(path).sections["codes"]
    bad = bytearray(raw)
    bad[codes["offset"] + 5] ^= 0xFF
    (tmp_path / "flip.sqret").write_bytes(bad)
    with pytest.raises(IndexFileError, match="section 'codes' checksum mismatch"):
        load(tmp_path / "flip.sqret")
    (tmp_path / "trunc.sqret").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(IndexFileError, match="truncated"):
        load(tmp_path / "trunc.sqret")
    (tmp_path / "short.sqret").write_bytes(raw[:10])
    with pytest.raises(IndexFileError, match="not a sqret index"):
        load(tmp_path / "short.sqret")
    (tmp_path / "empty.sqret").write_bytes(b"")
    with pytest.raises(IndexFileError, match="not a sqret index"):
        load(tmp_path / "empty.sqret")
    (tmp_path / "text.sqret").write_bytes(b"hello world, this is not an index at all" * 10)
    with pytest.raises(IndexFileError, match="bad magic"):
        load(tmp_path / "text.sqret")
    newer = bytearray(raw)
    newer[8:12] = (storage.FORMAT_VERSION + 1).to_bytes(4, "little")
    (tmp_path / "newer.sqret").write_bytes(newer)
    with pytest.raises(IndexFileError, match=f"format version {storage.FORMAT_VERSION + 1}"):
        load(tmp_path / "newer.sqret")
    dirbad = bytearray(raw)
    dirbad[-3] ^= 0x01
    (tmp_path / "dir.sqret").write_bytes(dirbad)
    with pytest.raises(IndexFileError, match="directory checksum"):
        load(tmp_path / "dir.sqret")
    with pytest.raises(FileNotFoundError):
        load(tmp_path / "missing.sqret")


def test_a_crash_mid_save_leaves_the_old_file_intact(tmp_path, monkeypatch):
    index, _, q = _built("pq")
    path = tmp_path / "a.sqret"
    index.save(path)
    before = path.read_bytes()
    index.add(torch.randn(10, 32))

    def boom(self, name, chunk):
        raise OSError("disk full")

    monkeypatch.setattr(storage.IndexWriter, "extend", boom)
    with pytest.raises(OSError, match="disk full"):
        index.save(path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["a.sqret"]  # no temporary left behind


@pytest.mark.parametrize("kind,metric,nbits", CASES)
def test_remove_then_search_and_ids_preserved(kind, metric, nbits):
    x, q = _data()
    labels = torch.arange(len(x)) * 7 + 1_000_000
    index, _, _ = _built(kind, metric, nbits, ids=labels)
    _, I = _search(index, q, 50)
    assert torch.isin(I, labels).all()
    gone = I[:, :5].reshape(-1).unique()
    assert index.remove(gone) == len(gone) and len(index) == len(x) - len(gone)
    assert index.remove(gone) == 0
    _, I2 = _search(index, q, 50)
    assert not torch.isin(I2, gone).any()
    rows = torch.nonzero(~torch.isin(labels, gone))[:, 0][[0, 10, -1]]
    rec = index.reconstruct(labels[rows])
    assert rec.shape == (3, 32) and (rec - x[rows]).norm(dim=1).mean() < x.norm(dim=1).mean()
    with pytest.raises(KeyError, match="not in the index"):
        index.reconstruct(gone[:1])


def test_k_larger_than_the_index_pads():
    index, _, q = _built("pq")
    index.remove(torch.arange(2990))
    D, I = index.search(q, 20)
    assert (I[:, 10:] == -1).all() and torch.isinf(D[:, 10:]).all() and (I[:, :10] >= 0).all()


@pytest.mark.parametrize("kind,metric,nbits", CASES)
def test_faiss_round_trip_same_results(kind, metric, nbits):
    index, _, q = _built(kind, metric, nbits, ids=torch.arange(3000) + 5)
    f = to_faiss(index)
    if kind == "ivf":
        f.nprobe = 4
    Df, If = f.search(q.numpy(), 10)
    D, I = _search(index, q)
    agree = (torch.from_numpy(If) == I).float().mean().item()
    assert agree > 0.97, agree
    np.testing.assert_allclose(Df, D.numpy(), rtol=1e-3, atol=1e-3)
    back = from_faiss(f)
    assert type(back) is type(index) and len(back) == len(index)
    D2, I2 = _search(back, q)
    assert torch.equal(I2, I) and torch.allclose(D2, D)


def test_from_faiss_trained_by_faiss(sift):
    import faiss

    base, q, _ = sift
    quantizer = faiss.IndexFlatL2(128)
    f = faiss.IndexIVFPQ(quantizer, 128, 32, 16, 8)
    f.train(base)
    f.add(base)
    f.nprobe = 8
    _, If = f.search(q, 10)
    ours = from_faiss(f)
    _, I = ours.search(q, 10, nprobe=8)
    assert (torch.from_numpy(If) == I).float().mean() > 0.97


@pytest.mark.parametrize("kind", ["pq", "ivf"])
def test_two_rank_torchrun_equals_single_process(tmp_path, kind):
    index, _, q = _built(kind)
    index.save(tmp_path / "i.sqret")
    torch.save(q, tmp_path / "q.pt")
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
    out = subprocess.run(
        torchrun + [str(HERE / "dist_search.py"), str(tmp_path / "i.sqret"), str(tmp_path / "q.pt"),
                    str(tmp_path / "out.pt"), "4"],
        capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert out.returncode == 0, out.stderr[-3000:]
    got = torch.load(tmp_path / "out.pt")
    D, I = _search(index, q)
    assert got["world"] == 2
    for mode in ("sharded", "replicated"):
        assert torch.equal(got[mode][1], I), mode
        assert torch.allclose(got[mode][0], D), mode


def test_bad_inputs_are_clear_errors():
    with pytest.raises(ValueError, match="not divisible"):
        PQIndex(30, 8)
    with pytest.raises(ValueError, match="nbits must be 4 or 8"):
        PQIndex(32, 8, 6)
    with pytest.raises(ValueError, match="metric must be one of"):
        PQIndex(32, 8, metric="cos")
    with pytest.raises(RuntimeError, match="not trained"):
        PQIndex(32, 8).search(torch.randn(2, 32), 3)
    with pytest.raises(RuntimeError, match="not trained"):
        IVFPQIndex(32, 4, 8).add(torch.randn(2, 32))
    index, x, q = _built("ivf")
    with pytest.raises(ValueError, match=r"queries must be \[n, d = 32\]"):
        index.search(torch.randn(2, 31), 3)
    with pytest.raises(ValueError, match="k must be >= 1"):
        index.search(q, 0)
    with pytest.raises(ValueError, match="nprobe must be an int >= 1"):
        index.search(q, 3, nprobe=0)
    bad = q.clone()
    bad[0, 0] = float("nan")
    with pytest.raises(ValueError, match="queries contains NaN or inf"):
        index.search(bad, 3)
    with pytest.raises(ValueError, match=r"ids must be \[n = 2\]"):
        index.add(x[:2], ids=[1, 2, 3])
    with pytest.raises(ValueError, match="at least nlist"):
        IVFPQIndex(32, 64, 8).train(x[:10])
    for nbits in (8, 4):  # PQIndex.search leaves float32 tensors' shapes to ops.pq_search: its messages
        flat = _built("pq", nbits=nbits)[0]
        for bad_q, msg in ((torch.randn(2, 31), r"queries has d = 31 features, .* need d = M \* dsub = 32"),
                           (torch.randn(32), "queries must be 2-D"), (torch.randn(2, 2, 32), "queries must be 2-D"),
                           (np.zeros((2, 31)), r"queries must be \[n, d = 32\]")):
            with pytest.raises(ValueError, match=msg):
                flat.search(bad_q, 3)


def test_cli_build_and_search(tmp_path, data_dir):
    d = data_dir / "siftsmall"
    run = [sys.executable, "-m", "sqret"]
    b = subprocess.run(run + ["index", "build", "--data", str(d / "siftsmall_base.fvecs"), "--index",
                              str(tmp_path / "s.sqret"), "--m", "16", "--ivf", "32", "--iters", "5"],
                       capture_output=True, text=True)
    assert b.returncode == 0, b.stderr
    s = subprocess.run(run + ["search", "--index", str(tmp_path / "s.sqret"), "--queries",
                              str(d / "siftsmall_query.fvecs"), "-k", "100", "--nprobe", "32", "--mmap",
                              "--groundtruth", str(d / "siftsmall_groundtruth.ivecs")],
                       capture_output=True, text=True)
    assert s.returncode == 0, s.stderr
    assert "QPS" in s.stdout and "1-recall@100: 1.0000" in s.stdout or "1-recall@100: 0.99" in s.stdout, s.stdout
    missing = subprocess.run(run + ["search", "--index", str(tmp_path / "nope"), "--queries", "x.fvecs"],
                             capture_output=True, text=True)
    assert missing.returncode != 0 and "no such file" in missing.stderr
    assert shutil.which(sys.executable)
