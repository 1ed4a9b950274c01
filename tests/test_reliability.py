"""Regression tests of the reliability issue: each reproducer ends in a clear exception or a correct
result (never a signal, silent garbage, lost data or foreign code). Paths that could crash the process run
in a child process (``run_isolated``), so a signal fails the test instead of the test run."""

from __future__ import annotations

import ast
import os
import pickle
import textwrap
import threading
from pathlib import Path

import filecraft
import numpy as np
import pytest
import torch
from filecraft import run_isolated

import sqret
from sqret import ops
from sqret.checkpoint import CheckpointError, digest, load_checkpoint, save_checkpoint
from sqret.index import IndexFileError, IVFPQIndex, PQIndex, load

ROOT = Path(__file__).resolve().parents[1]


def _data(n=2000, d=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    centers = torch.randn(16, d, generator=g) * 3
    return centers[torch.randint(0, 16, (n,), generator=g)] + torch.randn(n, d, generator=g)


def _index(kind: str, nbits: int, n: int = 2000):
    x = _data(n)
    index = PQIndex(32, 8, nbits) if kind == "pq" else IVFPQIndex(32, 8, 8, nbits)
    index.train(x, iters=4, progress=False)
    index.add(x)
    return index, x


# ---------------------------------------------------------------------------------------- 2. ivf_search


def test_ivf_search_compares_every_list_with_its_ids_in_a_child_process():
    run_isolated(textwrap.dedent("""
        import torch
        from sqret import ops
        M, K, d, nlist = 4, 256, 16, 3
        q, cen, C = torch.randn(2, d), torch.randn(nlist, d), torch.randn(M, K, d // M)
        probes = torch.tensor([[0, 1], [2, 0]])
        codes = [torch.zeros(1, M, dtype=torch.uint8)] * nlist
        def raises(call, err, match):
            try:
                call()
            except err as e:
                assert match in str(e), (match, str(e))
            else:
                raise AssertionError(f"no {err.__name__} for {match}")
        raises(lambda: ops.ivf_search(q, cen, C, codes, [torch.arange(50_000_000)] * nlist, probes, 3),
               ValueError, "has 1 codes but 50000000 ids")
        ok_ids = [torch.zeros(1, dtype=torch.int64)] * nlist
        raises(lambda: ops.ivf_search(q, cen, C, codes, [torch.zeros(1, dtype=torch.int32)] * nlist, probes, 3),
               ValueError, "ids of list 0 must be a 1-D int64")
        raises(lambda: ops.ivf_search(q, cen, C, codes, [torch.zeros(1)] * nlist, probes, 3), ValueError, "int64")
        raises(lambda: ops.ivf_search(q, cen, C, [torch.zeros(1, 5, dtype=torch.uint8)] * nlist, ok_ids, probes, 3),
               ValueError, "must be [n, M = 4]")
        C16 = torch.randn(M, 16, d // M)
        raises(lambda: ops.ivf_search(q, cen, C16, [torch.full((1, M), 16, dtype=torch.uint8)] * nlist, ok_ids,
                                      probes, 3), ValueError, "must lie in [0, K = 16)")
        raises(lambda: ops.ivf_search(q, cen, C, codes, ok_ids, probes, 3, precomputed=torch.zeros(nlist, M, 5)),
               ValueError, "precomputed must be")
        raises(lambda: ops.ivf_search(q, cen, C, codes, ok_ids, torch.tensor([[0, 3], [0, 0]]), 3), ValueError,
               "probes must be")
        raises(lambda: ops.ivf_search(q, cen, C, codes[:2], ok_ids[:2], probes, 3), ValueError, "each of the 3")
        raises(lambda: ops.ivf_search(q, cen, C, codes, ok_ids[:2], probes, 3), ValueError, "as many id arrays")
        v, i = ops.ivf_search(q, cen, C, codes, ok_ids, probes, 3)
        assert i.shape == (2, 3) and (i[:, :2] == 0).all() and (i[:, 2] == -1).all()
    """))


def test_ivf_search_accepts_non_contiguous_lists_and_numpy_arrays():
    M, K, d, nlist = 4, 16, 16, 2
    g = torch.Generator().manual_seed(1)
    q, cen, C = torch.randn(3, d, generator=g), torch.randn(nlist, d, generator=g), torch.randn(M, K, d // M)
    codes = [torch.randint(0, K, (M, 50), dtype=torch.uint8, generator=g).T for _ in range(nlist)]
    ids = [torch.arange(50) + 100 * li for li in range(nlist)]
    probes = torch.tensor([[0, 1]] * 3)
    want = ops.ivf_search(q, cen, C, [c.contiguous() for c in codes], ids, probes, 5)
    got = ops.ivf_search(q, cen, C, codes, ids, probes, 5)
    got_np = ops.ivf_search(q, cen, C, [c.contiguous().numpy() for c in codes], [i.numpy() for i in ids], probes, 5)
    with sqret.use_backend("reference"):
        ref = ops.ivf_search(q, cen, C, codes, ids, probes, 5)
    for out in (got, got_np, ref):
        assert torch.equal(out[1], want[1]) and torch.allclose(out[0], want[0], atol=1e-4)


# ---------------------------------------------------------------------------------------- 3. lifetimes


def test_adc_topk_on_packed_codes_of_any_layout():
    g = torch.Generator().manual_seed(2)
    lut = torch.randn(4, 7, 16, generator=g)
    codes = torch.randint(0, 16, (3000, 7), dtype=torch.uint8, generator=g)
    want = ops.adc_topk(lut, codes, 9)
    for _ in range(20):  # a freed temporary is soon reused by the allocator: repeat
        packed = ops.pack4(codes).T.contiguous().T
        got = ops.adc_topk(lut, packed, 9, packed=True)
        torch.randn(3000, 4)  # allocations between calls, as in real programs
        assert torch.equal(got[1], want[1]) and torch.allclose(got[0], want[0])


def _native_pointer_calls(path: Path) -> list[str]:
    """``<call>.data_ptr()`` / ``<call>.ctypes.data`` in a module: the address of a temporary that dies
    before the native call reads it."""
    bad = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Attribute) and node.attr == "data_ptr" and isinstance(node.value, ast.Call):
            bad.append(f"{path.name}:{node.lineno}: {ast.unparse(node)}")
        if (isinstance(node, ast.Attribute) and node.attr == "data" and isinstance(node.value, ast.Attribute)
                and node.value.attr == "ctypes" and isinstance(node.value.value, ast.Call)):
            bad.append(f"{path.name}:{node.lineno}: {ast.unparse(node)}")
    return bad


def test_no_native_call_gets_the_address_of_a_temporary():
    files = sorted((ROOT / "sqret").rglob("*.py")) + sorted((ROOT / "sqret_kernels").rglob("*.py"))
    bad = [b for f in files for b in _native_pointer_calls(f)]
    assert not bad, "addresses of temporaries handed to native code:\n" + "\n".join(bad)
    # the audit itself finds the pattern it is for
    probe = ROOT / "tests" / "_probe_tmp.py"
    try:
        probe.write_text("f(x.contiguous().data_ptr())\ng(a.astype(int).ctypes.data)\n")
        assert len(_native_pointer_calls(probe)) == 2
    finally:
        probe.unlink()


# ---------------------------------------------------------------------------------------- 4. truncated mmap


@pytest.mark.parametrize("kind", ["pq", "ivf"])
def test_a_memory_mapped_file_truncated_or_rewritten_under_a_search_is_an_error(tmp_path, kind):
    index, x = _index(kind, 8)
    path = tmp_path / "a.sqret"
    index.save(path)
    run_isolated(textwrap.dedent(f"""
        import os, time, torch
        from sqret.index import load, IndexFileError
        path = {str(path)!r}
        kw = {{"nprobe": 8}} if {kind!r} == "ivf" else {{}}
        q = torch.randn(3, 32)
        for change in ("truncate", "rewrite"):
            index = load(path, mmap=True, verify=False)
            D, I = index.search(q, 5, **kw)
            size = os.path.getsize(path)
            raw = open(path, "rb").read()
            time.sleep(0.01)
            if change == "truncate":
                os.truncate(path, size // 3)
            else:
                with open(path, "r+b") as f:
                    f.seek(size // 2); f.write(b"x")
            try:
                index.search(q, 5, **kw)
            except IndexFileError as e:
                assert "changed on disk" in str(e), e
            else:
                raise AssertionError("no IndexFileError after " + change)
            open(path, "wb").write(raw)  # restore for the next round
        index = load(path, mmap=True, verify=False)
        os.replace(path, path + ".old")  # renamed away: the map still holds the old file, searches go on
        assert torch.equal(index.search(q, 5, **kw)[1], I)
    """))


# ---------------------------------------------------------------------------------------- 5-8. crafted files


def _crafted(tmp_path, kind, nbits, edit_dir=None, edit_raw=None, text=None):
    index, _ = _index(kind, nbits, 500)
    src = tmp_path / "src.sqret"
    index.save(src)
    raw, directory = filecraft.read(src)
    if edit_raw:
        edit_raw(raw, directory)
    if edit_dir:
        edit_dir(directory)
    out = tmp_path / "crafted.sqret"
    filecraft.write(out, raw, text if text is not None else directory)
    return out


def _codes_to_16(raw, directory):
    filecraft.section_bytes(raw, directory, "codes")[:50] = bytes([16 + i % 200 for i in range(50)])


@pytest.mark.parametrize("kind", ["pq", "ivf"])
def test_4bit_codes_outside_the_table_are_rejected_or_never_read_out_of_bounds(tmp_path, kind):
    path = _crafted(tmp_path, kind, 4, edit_raw=_codes_to_16)
    for mmap in (False, True):
        with pytest.raises(IndexFileError, match=r"section 'codes' holds code \d+, outside \[0, K = 16\)"):
            load(path, mmap=mmap)
    run_isolated(textwrap.dedent(f"""
        import torch
        from sqret.index import load
        for mmap in (False, True):
            index = load({str(path)!r}, mmap=mmap, verify=False)
            kw = {{"nprobe": 8}} if {kind!r} == "ivf" else {{}}
            try:
                D, I = index.search(torch.randn(4, 32), 10, **kw)
            except ValueError as e:  # the flat scan checks its codes: a clear error
                assert "must lie in [0, K = 16)" in str(e), e
            else:  # the IVF scan clamps them: wrong distances for those codes, no read out of bounds
                assert torch.isfinite(D).all() and ((I >= 0) & (I < 500)).all()
    """))


@pytest.mark.parametrize("kind", ["pq", "ivf"])
@pytest.mark.parametrize("name,dtype", [("ids", "<i4"), ("ids", "<u8"), ("ids", "<c8"), ("codes", "<i2"),
                                        ("codebooks", "<f8")])
def test_a_section_of_another_dtype_is_an_error_naming_it(tmp_path, kind, name, dtype):
    def edit(directory):
        s = directory["sections"][name]
        item = np.dtype(dtype).itemsize
        old = np.dtype(s["dtype"]).itemsize
        s["dtype"] = dtype
        s["shape"] = [s["nbytes"] // item // max(1, int(np.prod(s["shape"][1:]))), *s["shape"][1:]] if \
            s["nbytes"] % item == 0 else s["shape"]
        s["nbytes"] = int(np.prod(s["shape"])) * item if s["nbytes"] % item == 0 else s["nbytes"] // old * item
    path = _crafted(tmp_path, kind, 8, edit_dir=edit)
    with pytest.raises(IndexFileError, match=rf"section '{name}'|'{name}'"):
        load(path)


@pytest.mark.parametrize("offsets", [lambda o: [5, *o[1:]], lambda o: [0, -3, *o[2:]], lambda o: o[:-1] + [o[-1] - 1],
                                     lambda o: [0, o[2], o[1], *o[3:]]])
def test_list_offsets_that_drop_or_scramble_vectors_are_an_error(tmp_path, offsets):
    def edit_raw(raw, directory):
        view = filecraft.section_bytes(raw, directory, "list_offsets")
        o = np.frombuffer(bytes(view), dtype=np.int64).tolist()
        view[:] = np.array(offsets(o), dtype=np.int64).tobytes()
    path = _crafted(tmp_path, "ivf", 8, edit_raw=edit_raw)
    for mmap in (False, True):
        for verify in (True, False):
            with pytest.raises(IndexFileError, match="list_offsets"):
                load(path, mmap=mmap, verify=verify)


DIRECTORY_EDITS = {
    "missing meta key": (lambda d: d["meta"].pop("M"), "'M' is missing"),
    "missing crc32": (lambda d: d["sections"]["codes"].pop("crc32"), "section 'codes' must be an object"),
    "meta a list": (lambda d: d.update(meta=[1, 2]), "'meta' must be an object"),
    "sections a list": (lambda d: d.update(sections=[]), "'sections' must be an object"),
    "kind unknown": (lambda d: d["meta"].update(kind="hnsw"), "unknown index kind"),
    "centroids of the wrong shape": (lambda d: d["sections"]["centroids"].update(shape=[4, 64]),
                                     "section 'centroids' must have shape"),
    "M a string": (lambda d: d["meta"].update(M="8"), "'M' must be an int"),
    "M not dividing d": (lambda d: d["meta"].update(M=5), "does not divide"),
    "nbits 6": (lambda d: d["meta"].update(nbits=6), "'nbits' must be one of"),
    "ntotal too large": (lambda d: d["meta"].update(ntotal=10**6), "must have shape"),
    "ntotal negative": (lambda d: d["meta"].update(ntotal=-1), "'ntotal' must be an int"),
    "nlist zero": (lambda d: d["meta"].update(nlist=0), "'nlist' must be an int"),
    "metric cos": (lambda d: d["meta"].update(metric="cos"), "'metric' must be one of"),
    "offset outside": (lambda d: d["sections"]["ids"].update(offset=1 << 40), "out of range"),
    "offset misaligned": (lambda d: d["sections"]["ids"].update(offset=d["sections"]["ids"]["offset"] + 8),
                          "out of range"),
    "sections overlap": (lambda d: d["sections"]["ids"].update(offset=d["sections"]["codes"]["offset"]), "overlap"),
    "nbytes lies": (lambda d: d["sections"]["codes"].update(nbytes=d["sections"]["codes"]["nbytes"] - 1),
                    "nbytes"),
    "extra section": (lambda d: d["sections"].update(extra=dict(d["sections"]["ids"])), "overlap"),
    "extra empty section": (lambda d: d["sections"].update(extra={"dtype": "<f4", "shape": [0], "offset": 64,
                                                                  "nbytes": 0, "crc32": 0}), "unexpected"),
    "missing section": (lambda d: d["sections"].pop("codebooks"), "missing ['codebooks']"),
    "dtype object": (lambda d: d["sections"]["ids"].update(dtype="|O"), "unsupported dtype"),
    "shape floats": (lambda d: d["sections"]["ids"].update(shape=[1.5]), "shape must be"),
    "bool for an int": (lambda d: d["meta"].update(nbits=True), "'nbits' must be one of"),
}


@pytest.mark.parametrize("case", sorted(DIRECTORY_EDITS))
def test_crafted_directories_are_index_file_errors_naming_the_field(tmp_path, case):
    edit, match = DIRECTORY_EDITS[case]
    path = _crafted(tmp_path, "ivf", 8, edit_dir=edit)
    for mmap in (False, True):
        for verify in (True, False):
            with pytest.raises(IndexFileError, match=match.replace("[", r"\[").replace("]", r"\]")):
                load(path, mmap=mmap, verify=verify)


@pytest.mark.parametrize("text", ["[" * 100_000 + "]" * 100_000, "{not json", '{"meta": {}}', '"a string"',
                                  "\xff\xfe garbage"])
def test_directories_that_are_not_the_format_are_index_file_errors(tmp_path, text):
    path = _crafted(tmp_path, "pq", 8, text=text.encode("latin-1"))
    with pytest.raises(IndexFileError):
        load(path)


def test_negative_ids_and_nan_codebooks_in_a_file_are_rejected(tmp_path):
    def neg(raw, directory):
        filecraft.section_bytes(raw, directory, "ids")[:8] = np.array([-7], np.int64).tobytes()
    with pytest.raises(IndexFileError, match="negative ids"):
        load(_crafted(tmp_path, "pq", 8, edit_raw=neg))

    def nan(raw, directory):
        filecraft.section_bytes(raw, directory, "codebooks")[:4] = np.array([np.nan], np.float32).tobytes()
    with pytest.raises(IndexFileError, match="'codebooks' holds NaN"):
        load(_crafted(tmp_path, "ivf", 8, edit_raw=nan), verify=False)


# ---------------------------------------------------------------------------------------- 9. failed mutations


@pytest.mark.parametrize("kind", ["pq", "ivf"])
@pytest.mark.parametrize("bad", [[1, 2], [1.0, 2.0, 3.0], ["a", "b", "c"], [[1, 2, 3]], [-1, 2, 3],
                                 np.array([2**64 - 1, 1, 2], dtype=np.uint64), np.array([1, 2, 3], np.float32),
                                 torch.tensor([1.0, 2.0, 3.0]), torch.tensor([True, False, True])])
def test_a_failed_add_changes_nothing(tmp_path, kind, bad):
    index, x = _index(kind, 8, 300)
    kw = {"nprobe": 8} if kind == "ivf" else {}
    before = index.search(x[:5], 5, **kw)
    with pytest.raises((ValueError, TypeError)):
        index.add(x[:3], ids=bad)
    assert len(index) == 300
    index.save(tmp_path / "a.sqret")
    back = load(tmp_path / "a.sqret")
    assert len(back) == 300 and torch.equal(back.search(x[:5], 5, **kw)[1], before[1])
    with pytest.raises(ValueError):  # codes that are not codes
        (index.add_codes if kind == "pq" else lambda c: index.add_preassigned(torch.zeros(3, dtype=torch.long), c))(
            torch.full((3, 8), 300, dtype=torch.int32))
    assert len(index) == 300


def test_ids_outside_int64_and_negative_ids_are_rejected():
    index, x = _index("pq", 8, 300)
    with pytest.raises(ValueError, match="fit in int64"):
        index.add(x[:1], ids=np.array([2**64 - 1], dtype=np.uint64))
    with pytest.raises(ValueError, match=">= 0"):
        index.add(x[:1], ids=[-1])
    with pytest.raises(TypeError, match="integers"):
        index.add(x[:1], ids=[2**70])
    index.add(x[:1], ids=np.array([2**63 - 1], dtype=np.uint64))
    assert int(index.ids()[-1]) == 2**63 - 1
    with pytest.raises(TypeError, match="integers"):
        index.remove([0.5])


def test_training_a_filled_index_is_refused():
    index, x = _index("ivf", 8, 300)
    with pytest.raises(RuntimeError, match="holds 300 codes"):
        index.train(x)
    index.reset()
    index.train(x, iters=2, progress=False)


# ---------------------------------------------------------------------------------------- 10. saves


@pytest.mark.parametrize("kind", ["pq", "ivf"])
def test_threads_saving_to_one_path_leave_a_whole_file(tmp_path, kind):
    index, x = _index(kind, 8, 500)
    path = tmp_path / "a.sqret"
    errors = []

    def save():
        try:
            for _ in range(5):
                index.save(path)
        except Exception as e:  # noqa: BLE001
            errors.append(e)

    for _ in range(2):
        threads = [threading.Thread(target=save) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not errors
        assert len(load(path)) == 500
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.sqret"]


def test_stale_temporaries_of_dead_processes_are_removed(tmp_path):
    index, _ = _index("pq", 4, 100)
    path = tmp_path / "a.sqret"
    import subprocess
    import sys

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    pid = int(dead.stdout)
    stale = [tmp_path / f".a.sqret.tmp-{pid}", tmp_path / f".a.sqret.tmp-{pid}-1-2-abcd"]
    alive = tmp_path / f".a.sqret.tmp-{os.getppid()}-1-2-abcd"  # a live process's: kept
    other = tmp_path / f".b.sqret.tmp-{pid}"  # another file's: kept
    for p in (*stale, alive, other):
        p.write_bytes(b"x" * 100)
    index.save(path)
    assert not any(p.exists() for p in stale) and alive.exists() and other.exists()


# ---------------------------------------------------------------------------------------- 13. pack4


def test_pack4_and_unpack4_check_their_inputs():
    with pytest.raises(ValueError, match=r"\[0, K = 16\)"):
        ops.pack4(torch.tensor([[16, 1]]))
    with pytest.raises(ValueError, match=r"\[0, K = 16\)"):
        ops.pack4(torch.tensor([[-1, 1]]))
    with pytest.raises(TypeError, match="dtype"):
        ops.pack4(torch.tensor([[1.0, 2.0]]))
    with pytest.raises(ValueError, match=r"for M = 7 must be \[N, 4\]"):
        ops.unpack4(torch.zeros(2, 2, dtype=torch.uint8), 7)
    with pytest.raises(TypeError, match="uint8"):
        ops.unpack4(torch.zeros(2, 2, dtype=torch.int32), 4)
    c = torch.randint(0, 16, (5, 7), dtype=torch.uint8)
    assert torch.equal(ops.unpack4(ops.pack4(c), 7), c)


# ---------------------------------------------------------------------------------------- 14-15. checkpoints


class _Payload:
    def __reduce__(self):
        return (os.system, ("touch PWNED_MARKER",))


def test_a_checkpoint_cannot_run_code(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    evil = tmp_path / "evil.pt"
    torch.save({"format": "sqret-checkpoint", "version": 1, "state": {"x": _Payload()}, "sha256": "0"}, evil)
    with pytest.raises(CheckpointError, match="refused"):
        load_checkpoint(evil)
    evil2 = tmp_path / "evil2.pt"
    with open(evil2, "wb") as f:
        pickle.dump(_Payload(), f)
    with pytest.raises(CheckpointError):
        load_checkpoint(evil2)
    assert not (tmp_path / "PWNED_MARKER").exists()


def test_checkpoint_byte_flips_are_noticed_or_harmless(tmp_path):
    state = {"model": {"w": torch.randn(50, 30), "b": torch.randn(30).bfloat16()}, "epoch": 3, "spec": {"name": "spq"},
             "generator": torch.Generator().get_state(), "lr": 1e-3, "betas": (0.9, 0.99)}
    path = tmp_path / "c.pt"
    save_checkpoint(state, path)
    assert digest(load_checkpoint(path)) == digest(state)
    raw = path.read_bytes()
    rng = np.random.default_rng(0)
    noticed = 0
    for trial in range(200):
        bad = bytearray(raw)
        for pos in rng.choice(len(raw), size=1 + trial % 6, replace=False):
            bad[pos] ^= 1 << int(rng.integers(8))
        p = tmp_path / f"flip{trial}.pt"
        p.write_bytes(bad)
        try:
            got = load_checkpoint(p)
        except CheckpointError:
            noticed += 1
        else:  # the flips hit bytes that carry nothing (zip padding): the content is the saved one
            assert digest(got) == digest(state)
    assert noticed > 150
    for cut in (0, 10, len(raw) // 2, len(raw) - 1):
        (tmp_path / "cut.pt").write_bytes(raw[:cut])
        with pytest.raises(CheckpointError):
            load_checkpoint(tmp_path / "cut.pt")
    torch.save({"model": {}}, tmp_path / "plain.pt")
    with pytest.raises(CheckpointError, match="not a sqret checkpoint"):
        load_checkpoint(tmp_path / "plain.pt")
    with pytest.raises(FileNotFoundError):
        load_checkpoint(tmp_path / "none.pt")
    with pytest.raises(CheckpointError, match="directory"):
        load_checkpoint(tmp_path)


def test_a_kill_mid_save_leaves_a_temporary_that_the_next_save_removes(tmp_path):
    import signal
    import subprocess
    import sys
    import time

    path = tmp_path / "a.sqret"
    child = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import time, numpy as np
        from sqret.index.storage import IndexWriter
        w = IndexWriter({str(path)!r}, {{"kind": "pq"}})
        w.add("codes", np.zeros((1000, 8), np.uint8))
        w.f.flush()
        print("writing", flush=True)
        time.sleep(60)
    """)], stdout=subprocess.PIPE, text=True)
    assert child.stdout.readline().strip() == "writing"
    child.send_signal(signal.SIGKILL)
    child.wait()
    left = [p for p in tmp_path.iterdir() if p.name.startswith(".a.sqret.tmp-")]
    assert len(left) == 1 and not path.exists()  # the kill left its temporary, and no index
    time.sleep(0.01)
    index, _ = _index("pq", 4, 100)
    index.save(path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.sqret"] and len(load(path)) == 100
