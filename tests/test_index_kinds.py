"""The recall-QPS frontier's index kinds: IVF fast scan (exact and approximate scoring), by_residual=False,
refinement, rotations, index_factory, codebook tuning, persistence of every kind, FAISS round trips, bad
specs and parameters. Every kind against a float64 brute force on small data."""

from __future__ import annotations

import pytest
import torch

import sqret
from sqret import ops
from sqret.index import IVFPQIndex, PQIndex, PreTransformIndex, RefineIndex, index_factory, load
from sqret.index.transform import balanced_order, train_transform


def _data(n=1200, d=16, seed=0, skew=False):
    g = torch.Generator().manual_seed(seed)
    centers = torch.randn(12, d, generator=g) * 3
    x = centers[torch.randint(0, 12, (n,), generator=g)] + torch.randn(n, d, generator=g)
    if skew:
        x = x * torch.logspace(1.5, -1, d)[None]
    return x, torch.randn(9, d, generator=g) * 3


def _brute_ivf(index, q, k, nprobe):
    """float64 ADC distances of every code of the probed lists, the k best (ties by id)."""
    s = index._state
    probes = ops.coarse_probe(q, s.centroids, nprobe, index.metric)
    C, cen = s.codebooks.double(), s.centroids.double()
    out_v, out_i = [], []
    for qi in range(q.shape[0]):
        cand_d, cand_i = [], []
        for li in probes[qi].tolist():
            codes, ids = index.list_codes(li).long(), index.list_ids(li)
            if not len(ids):
                continue
            rec = C[torch.arange(index.M)[None, :], codes].reshape(len(ids), -1)
            if index.by_residual:
                rec = rec + cen[li]
            x = q[qi].double()
            dist = ((x - rec) ** 2).sum(1) if index.metric == "l2" else -(rec @ x)
            cand_d.append(dist)
            cand_i.append(ids)
        d, i = torch.cat(cand_d), torch.cat(cand_i)
        order = torch.argsort(i, stable=True)
        d, i = d[order], i[order]
        best = torch.sort(d, stable=True).indices[:k]
        out_v.append(d[best] if index.metric == "l2" else -d[best])
        out_i.append(i[best])
    return torch.stack(out_v), torch.stack(out_i)


@pytest.mark.parametrize("metric", ["l2", "ip"])
@pytest.mark.parametrize("by_residual", [True, False])
@pytest.mark.parametrize("fast_scan", [True, False])
def test_ivf_kinds_exact_mode_equal_brute_force(metric, by_residual, fast_scan):
    x, q = _data()
    index = IVFPQIndex(16, 8, 4, 4, metric, fast_scan=fast_scan, by_residual=by_residual)
    index.train(x, iters=4, progress=False)
    index.add(x, ids=torch.randperm(len(x)) * 3)
    for nprobe in (1, 3, 8):
        D, I = index.search(q, 12, nprobe=nprobe)
        bv, bi = _brute_ivf(index, q, 12, nprobe)
        assert torch.equal(I, bi), (nprobe, I[0], bi[0])
        assert torch.allclose(D.double(), bv, rtol=1e-5, atol=1e-3)


@pytest.mark.parametrize("skew", [False, True])
@pytest.mark.parametrize("largest", [False, True])
def test_approximate_mode_is_the_quantization_model_exactly(skew, largest):
    """The native fast scan's quantized distances equal reference.quantize_lut's model bit for bit (the
    16-bit split sub-spaces of skewed tables included), and the top-k by them (ties by position)."""
    g = torch.Generator().manual_seed(3)
    for trial in range(12):
        M = int(torch.randint(1, 33, (), generator=g))
        if skew:  # the first M // 8 sub-spaces (one at least) 100x wider than the rest, which still differ 10x
            scale = torch.where(torch.arange(M) < max(1, M // 8), 1000.0, torch.logspace(1, 0, M))
        else:
            scale = torch.rand(M, generator=g) * 5 + 0.1
        lut = torch.randn(int(torch.randint(1, 5, (), generator=g)), M, 16, generator=g) * scale[None, :, None]
        codes = torch.randint(0, 16, (int(torch.randint(1, 600, (), generator=g)), M), dtype=torch.uint8, generator=g)
        k = int(torch.randint(1, 40, (), generator=g))
        fs = ops.fastscan_pack(codes)
        got = ops.adc_topk(lut, fs, k, largest=largest, exact=False)
        with sqret.use_backend("reference"):
            want = ops.adc_topk(lut, fs, k, largest=largest, exact=False)
        assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1]), trial
        q, _, _, split = ops.reference.quantize_lut(-lut if largest else lut)
        if skew and M >= 8:
            assert split.any(), "skewed tables split their widest sub-spaces"


@pytest.mark.parametrize("metric", ["l2", "ip"])
def test_ivf_approximate_mode_is_the_reference_model_exactly(metric):
    """IVF fast scan, quantized distances: the native search selects the reference's ids exactly (lists of
    several blocks, k from 1 to 40: the top-k fills inside a block and its cut then moves)."""
    g = torch.Generator().manual_seed(11)
    for trial in range(10):
        M, nlist, d_sub = int(torch.randint(2, 17, (), generator=g)), int(torch.randint(1, 6, (), generator=g)), 2
        d = M * d_sub
        q, cen = torch.randn(3, d, generator=g), torch.randn(nlist, d, generator=g)
        cb = torch.randn(M, 16, d_sub, generator=g)
        sizes = torch.randint(0, 400, (nlist,), generator=g).tolist()
        codes = [torch.randint(0, 16, (n, M), generator=g, dtype=torch.uint8) for n in sizes]
        ids = [torch.randperm(10_000, generator=g)[:n] for n in sizes]
        lists = ops.InvertedLists([ops.fastscan_pack(c).blocks for c in codes], ids, M, 16, layout="fastscan")
        k, nprobe = int(torch.randint(1, 41, (), generator=g)), int(torch.randint(1, nlist + 1, (), generator=g))
        probes = torch.stack([torch.randperm(nlist, generator=g)[:nprobe] for _ in range(3)])
        got = ops.ivf_search(q, cen, cb, lists, None, probes, k, metric, exact=False)
        with sqret.use_backend("reference"):
            want = ops.ivf_search(q, cen, cb, lists, None, probes, k, metric, exact=False)
        assert torch.equal(got[1], want[1]), trial  # the same selection; values within float rounding
        torch.testing.assert_close(got[0], want[0], rtol=1e-6, atol=1e-5)



@pytest.mark.parametrize("exact", [False, True])
def test_ivf_first_block_cut_changes_no_result(exact):
    """A query's first block of at least k codes offers only the codes that can beat its k-th smallest sum.
    The same lists probed after a short list (fewer than k codes: the cut is skipped) give the same ids and
    distances, and the reference's ids: near queries, and far ones (many equal quantized distances, ties by
    id), both metrics, residual tables or not, k from 1 to 64. The other lists' centroids lie far away, so with
    residual tables the k best are the first block's own: a cut too tight would lose some of them."""
    g = torch.Generator().manual_seed(17)
    for trial in range(40):  # few sub-spaces and far queries: many codes share the k-th code's distance
        M, d_sub, k = (2, 2, 3, 5, 16)[trial % 5], 2, int(torch.randint(1, 65, (), generator=g))
        d, far = M * d_sub, (0.0, 1e3, 3e4, 1e6)[trial % 4]
        q, cen = torch.randn(3, d, generator=g) + far, torch.randn(4, d, generator=g)
        cen[1:] -= far + 50.0
        cb = torch.randn(M, 16, d_sub, generator=g)
        sizes = [int(torch.randint(k, 65, (), generator=g)), int(torch.randint(0, 80, (), generator=g)),
                 int(torch.randint(0, 20, (), generator=g)), int(torch.randint(1, k + 1, (), generator=g)) - 1]
        codes = [torch.randint(0, 16, (n, M), generator=g, dtype=torch.uint8) for n in sizes]
        ids = list(torch.randperm(10_000, generator=g)[: sum(sizes)].split(sizes))
        lists = ops.InvertedLists([ops.fastscan_pack(c).blocks for c in codes], ids, M, 16, layout="fastscan")
        cut_first, short_first = torch.tensor([[0, 1, 2, 3]] * 3), torch.tensor([[3, 0, 1, 2]] * 3)
        for metric in ("l2", "ip"):
            for by_residual in (True, False):
                kw = dict(exact=exact, by_residual=by_residual)
                with sqret.use_backend("cpu_native"):
                    got = ops.ivf_search(q, cen, cb, lists, None, cut_first, k, metric, **kw)
                    want = ops.ivf_search(q, cen, cb, lists, None, short_first, k, metric, **kw)
                assert torch.equal(got[1], want[1]) and torch.equal(got[0], want[0]), (trial, metric, by_residual)
                if not far:
                    with sqret.use_backend("reference"):
                        ref = ops.ivf_search(q, cen, cb, lists, None, cut_first, k, metric, **kw)
                    assert torch.equal(got[1], ref[1]), (trial, metric, by_residual)

def test_exact_mode_of_skewed_tables_stays_exact():
    x, q = _data(3000, 32, skew=True)
    index = PQIndex(32, 16, 4).train(x, iters=4, progress=False)
    index.add(x)
    lut = ops.build_lut(q, index.codebooks)
    want = ops.adc_topk(lut, index.codes(), 10)
    got = index.search(q, 10)
    assert torch.equal(got[1], want[1]) and torch.allclose(got[0], want[0], rtol=1e-5)


def test_ivf_approximate_distances_within_the_quantization_error():
    x, q = _data(2000, 32)
    index = IVFPQIndex(32, 8, 16, 4, fast_scan=True, by_residual=False, exact=False)
    index.train(x, iters=4, progress=False)
    index.add(x)
    D, I = index.search(q, 10, nprobe=4)
    assert (D[:, 1:] >= D[:, :-1]).all()
    lut = ops.build_lut(q, index.codebooks).double()
    _, a, _, _ = ops.reference.quantize_lut(lut)
    by_id = torch.zeros((2000, 16), dtype=torch.long)
    for li in range(8):
        by_id[index.list_ids(li)] = index.list_codes(li).long()
    codes = by_id[I]  # [Q, k, M]
    exact = sum(lut[torch.arange(9)[:, None], m, codes[:, :, m]] for m in range(16))
    assert ((D.double() - exact).abs() <= 16 * a[:, None] / 2 * 1.01 + 1e-4).all()


def test_refine_equals_the_exact_re_rank_of_the_base_candidates():
    x, q = _data()
    for storage in ("flat", "fp16", "sq8"):
        index = RefineIndex(IVFPQIndex(16, 8, 4, 4, fast_scan=True, exact=False), storage, k_factor=4)
        index.train(x, iters=4, progress=False)
        labels = torch.randperm(len(x)) + 1000
        index.add(x, ids=labels)
        D, I = index.search(q, 10, nprobe=3)
        _, rows = index.base.search(q, 40, nprobe=3)
        stored = index.reconstruct(labels).double()
        for qi in range(q.shape[0]):
            r = rows[qi][rows[qi] >= 0]
            lab = labels[r]
            dist = ((stored[r] - q[qi].double()) ** 2).sum(1)
            order = torch.argsort(lab, stable=True)
            best = torch.sort(dist[order], stable=True).indices[:10]
            assert torch.equal(I[qi], lab[order][best]), storage
            assert torch.allclose(D[qi].double(), dist[order][best], rtol=1e-4, atol=1e-3)
        if storage == "flat":  # the stored vectors themselves
            assert torch.equal(index.reconstruct(labels[:5]), x[:5])
        n = index.remove(labels[:100])
        assert n == 100 and len(index) == len(x) - 100 and len(index.base) == len(x) - 100
        _, I2 = index.search(q, 10, nprobe=8)
        assert not torch.isin(I2, labels[:100]).any()


def test_refine_reaches_full_recall_with_exact_vectors():
    x, q = _data(2000, 16)
    truth = torch.cdist(q.double(), x.double()).topk(10, largest=False).indices
    index = index_factory(16, "IVF8,PQ4x4fs,RFlat")
    index.train(x, iters=4, progress=False)
    index.add(x)
    _, I = index.search(q, 10, nprobe=8, k_factor=200)
    assert torch.equal(I, truth)


@pytest.mark.parametrize("kind", ["random", "pca", "pcar", "opq"])
def test_rotations_are_orthonormal_and_searches_go_through_them(kind):
    x, q = _data(1500, 16, skew=True)
    t = train_transform(kind, x, 16, 4, iters=3)
    assert torch.allclose(t.R.T @ t.R, torch.eye(16), atol=1e-4)
    index = PreTransformIndex(16, kind, PQIndex(16, 4, 8), M=4)
    index.train(x, iters=4, progress=False)
    index.add(x)
    D, I = index.search(q, 5)
    D2, I2 = index.base.search(q @ index.matrix, 5)
    assert torch.equal(I, I2) and torch.equal(D, D2)
    short = PreTransformIndex(16, kind, PQIndex(8, 4, 8), M=4)
    short.train(x, iters=3, progress=False)
    assert short.matrix.shape == (16, 8)


def test_balanced_pca_and_opq_lower_the_quantization_error_of_skewed_data():
    x, _ = _data(3000, 16, skew=True)
    err = {}
    for kind in (None, "pca", "opq"):
        index = PQIndex(16, 4, 4) if kind is None else PreTransformIndex(16, kind, PQIndex(16, 4, 4), M=4)
        index.train(x, iters=8, progress=False)
        index.add(x)
        err[kind] = float(((index.reconstruct(torch.arange(3000)) - x) ** 2).sum(1).mean())
    assert err["pca"] < err[None] and err["opq"] <= err["pca"] * 1.02, err
    w = torch.tensor([8.0, 4, 2, 1, 1, 0.5, 0.5, 0.25])
    order = balanced_order(w, 4)
    prods = [float(w[order[2 * i : 2 * i + 2]].log().sum()) for i in range(4)]
    assert max(prods) - min(prods) <= abs(float(w.log().max() - w.log().min())), prods


SPECS = ["PQ8", "PQ8x4fs", "PQ4x4", "IVF8,PQ4", "IVF8,PQ8x4fs", "IVF8,PQ8x4fsr", "IVF8,PQ4x4", "OPQ4_16,IVF8,PQ4",
         "OPQ4,PQ4", "PCA8,PQ4", "PCAR16,IVF8,PQ8x4fs", "RR16,PQ4", "IVF8,PQ8x4fs,RFlat", "IVF8,PQ4,Refine(SQ8)",
         "PQ8x4fs,Refine(SQfp16)", "OPQ4_8,IVF8,PQ4x4fsr,Refine(Flat)"]


def _explicit(spec):
    """The same index, built by hand."""
    table = {
        "PQ8": lambda: PQIndex(16, 8, 8), "PQ8x4fs": lambda: PQIndex(16, 8, 4), "PQ4x4": lambda: PQIndex(16, 4, 4),
        "IVF8,PQ4": lambda: IVFPQIndex(16, 8, 4), "IVF8,PQ8x4fs": lambda: IVFPQIndex(16, 8, 8, 4, fast_scan=True,
                                                                                     by_residual=False),
        "IVF8,PQ8x4fsr": lambda: IVFPQIndex(16, 8, 8, 4, fast_scan=True), "IVF8,PQ4x4": lambda: IVFPQIndex(16, 8, 4, 4),
        "OPQ4_16,IVF8,PQ4": lambda: PreTransformIndex(16, "opq", IVFPQIndex(16, 8, 4), M=4),
        "OPQ4,PQ4": lambda: PreTransformIndex(16, "opq", PQIndex(16, 4), M=4),
        "PCA8,PQ4": lambda: PreTransformIndex(16, "pca", PQIndex(8, 4), M=4),
        "PCAR16,IVF8,PQ8x4fs": lambda: PreTransformIndex(16, "pcar", IVFPQIndex(16, 8, 8, 4, fast_scan=True,
                                                                                  by_residual=False), M=8),
        "RR16,PQ4": lambda: PreTransformIndex(16, "random", PQIndex(16, 4), M=4),
        "IVF8,PQ8x4fs,RFlat": lambda: RefineIndex(IVFPQIndex(16, 8, 8, 4, fast_scan=True, by_residual=False), "flat"),
        "IVF8,PQ4,Refine(SQ8)": lambda: RefineIndex(IVFPQIndex(16, 8, 4), "sq8"),
        "PQ8x4fs,Refine(SQfp16)": lambda: RefineIndex(PQIndex(16, 8, 4), "fp16"),
        "OPQ4_8,IVF8,PQ4x4fsr,Refine(Flat)": lambda: RefineIndex(PreTransformIndex(
            16, "opq", IVFPQIndex(8, 8, 4, 4, fast_scan=True), M=4), "flat"),
    }
    return table[spec]()


def _params(index):
    p = index.search_parameters()
    return {k: v for k, v in (("nprobe", 3), ("k_factor", 3)) if k in p}


@pytest.mark.parametrize("spec", SPECS)
def test_factory_specs_equal_their_explicit_construction_and_survive_files(tmp_path, spec):
    x, q = _data(900, 16)
    a, b = index_factory(16, spec), _explicit(spec)
    results = []
    for index in (a, b):
        index.train(x, iters=3, seed=1, progress=False)
        index.add(x)
        results.append(index.search(q, 7, **_params(index)))
    assert type(a) is type(b) and torch.equal(results[0][1], results[1][1]), spec
    assert torch.equal(results[0][0], results[1][0])
    a.save(tmp_path / "a.sqret")
    for mmap in (False, True):
        for verify in (True, False):
            back = load(tmp_path / "a.sqret", mmap=mmap, verify=verify)
            assert type(back) is type(a) and len(back) == len(a) and back.readonly == mmap
            D, I = back.search(q, 7, **_params(back))
            assert torch.equal(I, results[0][1]) and torch.equal(D, results[0][0]), (spec, mmap, verify)
    with pytest.raises(RuntimeError, match="read-only"):
        load(tmp_path / "a.sqret", mmap=True).add(x[:2])


@pytest.mark.parametrize("spec, part", [
    ("HNSW32", "HNSW32"), ("IVF8,Flat", "Flat"), ("IVF8,PQ5", "PQ5"), ("PQ8x6", "PQ8x6"), ("PQ8fs", "PQ8fs"),
    ("PQ8x4fsr", "PQ8x4fsr"), ("OPQ3,PQ4", "OPQ3"), ("PCA32,PQ4", "PCA32"), ("IVF8,PQ4,RFlat2", "RFlat2"),
    ("IVF8,PQ4,Refine(PQ4)", "Refine(PQ4)"), ("IVF8,IVF8,PQ4", "IVF8,PQ4"), ("LSH", "LSH"), ("", "spec must be"),
    ("PCA8_4,PQ4", "PCA8_4"), ("IVF0,PQ4", "IVF0")])
def test_bad_specs_name_the_unsupported_part(spec, part):
    with pytest.raises(ValueError, match=part.replace("(", r"\(").replace(")", r"\)")):
        idx = index_factory(16, spec)
        idx.train(_data(600, 16)[0], iters=1, progress=False)


def test_bad_search_parameters_are_clear_errors():
    x, q = _data(900, 16)
    index = index_factory(16, "IVF8,PQ8x4fs,RFlat")
    index.train(x, iters=2, progress=False)
    index.add(x)
    for kw, err, match in (({"k_factor": 0.5}, ValueError, "k_factor must be a number >= 1"),
                           ({"k_factor": True}, ValueError, "k_factor"), ({"nprobe": 9}, ValueError, "more than"),
                           ({"nprobe": 0}, ValueError, "nprobe must be"), ({"exact": 1}, TypeError, "exact must be"),
                           ({"nprobes": 2}, TypeError, "nprobes")):
        with pytest.raises(err, match=match):
            index.search(q, 5, **kw)
    with pytest.raises(ValueError, match="fast_scan"):
        IVFPQIndex(16, 8, 8, 8, fast_scan=True)
    with pytest.raises(ValueError, match="storage must be"):
        RefineIndex(PQIndex(16, 4), "sq4")
    filled = PQIndex(16, 4).train(x, iters=1, progress=False)
    filled.add(x)
    with pytest.raises(ValueError, match="must be empty"):
        RefineIndex(filled)
    with pytest.raises(ValueError, match="divisible by M"):
        train_transform("pca", x, 12, 5)
    with pytest.raises(ValueError, match="M = 3 does not divide"):
        PreTransformIndex(16, "opq", PQIndex(16, 4), M=3)


def test_tune_keeps_only_better_codebooks_and_needs_an_empty_trained_index():
    x, _ = _data(3000, 16)
    index = PQIndex(16, 4, 8).train(x, iters=6, progress=False)
    before = index.codebooks.clone()
    report = index.tune(x, steps=60, progress=False)
    assert report["recall@10_after"] >= report["recall@10_before"] or torch.equal(index.codebooks, before)
    assert report["kept"] == (not torch.equal(index.codebooks, before))
    index.add(x)
    with pytest.raises(RuntimeError, match="holds 3000 codes"):
        index.tune(x)
    with pytest.raises(RuntimeError, match="not trained"):
        PQIndex(16, 4).tune(x)
    ivf = index_factory(16, "OPQ4,IVF8,PQ4,RFlat")
    ivf.train(x, iters=3, progress=False)
    r = ivf.tune(x, steps=20, keep="always")
    assert r["kept"] and set(r) >= {"recall@10_before", "recall@10_after"}
    with pytest.raises(ValueError, match="keep must be"):
        ivf.tune(x, keep="sometimes")


@pytest.mark.parametrize("by_residual", [False, True])
def test_faiss_round_trips_of_ivf_fast_scan(by_residual):
    faiss = pytest.importorskip("faiss")
    from sqret.index.faiss_io import from_faiss, to_faiss

    x, q = _data(2000, 32)
    index = IVFPQIndex(32, 16, 16, 4, fast_scan=True, by_residual=by_residual, exact=False)
    index.train(x, iters=4, progress=False)
    index.add(x, ids=torch.arange(2000) * 5 + 3)
    f = to_faiss(index)
    assert isinstance(f, faiss.IndexIVFPQFastScan) and bool(f.by_residual) == by_residual and f.ntotal == 2000
    back = from_faiss(f)
    assert back.fast_scan and back.by_residual == by_residual and not back.exact
    for li in range(16):
        assert torch.equal(back.list_ids(li).sort().values, index.list_ids(li).sort().values)
        order_a, order_b = torch.argsort(index.list_ids(li)), torch.argsort(back.list_ids(li))
        assert torch.equal(back.list_codes(li)[order_b], index.list_codes(li)[order_a])
    D, I = index.search(q, 10, nprobe=4)
    D2, I2 = back.search(q, 10, nprobe=4)
    assert torch.equal(I, I2) and torch.equal(D, D2)
    f.nprobe = 4
    _, If = f.search(q.numpy(), 10)
    # both score by quantized tables, each quantized its own way: the same neighbours, mostly
    assert _overlap(torch.from_numpy(If), I) > (0.8 if by_residual else 0.9)
    exact, _ = index.search(q, 10, nprobe=4, exact=True), None
    assert _overlap(torch.from_numpy(If), exact[1]) > 0.8
    trained = faiss.index_factory(32, "IVF16,PQ16x4fs")
    trained.train(x.numpy())
    trained.add(x.numpy())
    trained.nprobe = 4
    _, If = trained.search(q.numpy(), 10)
    ours = from_faiss(trained)
    assert _overlap(ours.search(q, 10, nprobe=4)[1], torch.from_numpy(If)) > 0.9


def _overlap(a: torch.Tensor, b: torch.Tensor) -> float:
    return sum(len(set(x.tolist()) & set(y.tolist())) for x, y in zip(a, b, strict=True)) / a.numel()


def test_files_of_format_version_1_still_load(tmp_path):
    import filecraft

    x, q = _data(600, 16)
    index = IVFPQIndex(16, 4, 4).train(x, iters=2, progress=False)
    index.add(x)
    index.save(tmp_path / "v2.sqret")
    raw, directory = filecraft.read(tmp_path / "v2.sqret")
    for key in ("exact", "fast_scan", "by_residual"):
        directory["meta"].pop(key)
    raw[8:12] = (1).to_bytes(4, "little")
    filecraft.write(tmp_path / "v1.sqret", raw, directory)
    back = load(tmp_path / "v1.sqret")
    assert back.by_residual and not back.fast_scan and back.exact
    assert torch.equal(back.search(q, 5, nprobe=2)[1], index.search(q, 5, nprobe=2)[1])
    raw[8:12] = (2).to_bytes(4, "little")
    filecraft.write(tmp_path / "v2bad.sqret", raw, directory)
    with pytest.raises(Exception, match="meta field '[a-z_]+' is missing"):
        load(tmp_path / "v2bad.sqret")


def test_cli_builds_from_a_spec(tmp_path, data_dir):
    from sqret import cli

    d = data_dir / "siftsmall"
    rc = cli.main(["index", "build", "--data", str(d / "siftsmall_base.fvecs"), "--index", str(tmp_path / "s.sqret"),
                   "--spec", "IVF32,PQ32x4fs,RFlat", "--iters", "3"])
    assert rc == 0 and isinstance(load(tmp_path / "s.sqret"), RefineIndex)
    rc = cli.main(["index", "search", "--index", str(tmp_path / "s.sqret"), "--queries",
                   str(d / "siftsmall_query.fvecs"),
                   "--nprobe", "8", "--k-factor", "8", "--groundtruth", str(d / "siftsmall_groundtruth.ivecs")])
    assert rc == 0
