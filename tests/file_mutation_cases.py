"""File-mutation suite (run by tests/test_file_mutation.py in a child process: a signal fails that test).

For PQ and IVF-PQ indexes in 8 and 4 bits: byte flips anywhere in the file, truncations, and directory edits
with every checksum recomputed (dtype, shape, offset, nbytes, list_offsets, nbits, M, d, ntotal, nlist, missing
keys), each loaded with and without mmap / verify. Allowed outcomes: an IndexFileError; or, with verification
on, an index that answers exactly as the original; or, with ``verify=False`` (documented: results may be
wrong, no read out of bounds), any answer of the right shape or a clear ValueError.
"""

from __future__ import annotations

import json

import filecraft
import numpy as np
import pytest
import torch

from sqret.index import IndexFileError, IVFPQIndex, PQIndex, index_factory, load

KINDS = [("pq", 8, {}), ("pq", 4, {}), ("ivf", 8, {}), ("ivf", 4, {}), ("ivf", 4, {"fast_scan": True}),
         ("ivf", 8, {"by_residual": False}), ("spec", 4, {"spec": "OPQ4,IVF6,PQ4x4fs,Refine(SQ8)"}),
         ("spec", 8, {"spec": "PCA8,PQ4,RFlat"})]
MODES = [(mmap, verify) for mmap in (False, True) for verify in (True, False)]
Q = torch.randn(5, 16, generator=torch.Generator().manual_seed(9))


@pytest.fixture(scope="module", params=KINDS, ids=lambda p: f"{p[0]}{p[1]}{''.join(p[2])}")
def saved(request, tmp_path_factory):
    kind, nbits, options = request.param
    g = torch.Generator().manual_seed(1)
    x = torch.randn(600, 16, generator=g)
    if kind == "spec":
        index = index_factory(16, options["spec"])
    else:
        index = PQIndex(16, 4, nbits) if kind == "pq" else IVFPQIndex(16, 6, 4, nbits, **options)
    index.train(x, iters=3, progress=False)
    index.add(x, ids=torch.arange(600) * 3 + 7)
    path = tmp_path_factory.mktemp(f"{kind}{nbits}") / "index.sqret"
    index.save(path)
    return path, kind, _answer(load(path))


def _answer(index):
    return index.search(Q, 8, **({"nprobe": 3} if "nprobe" in index.search_parameters() else {}))


def _outcome(path, mmap: bool, verify: bool, expected) -> str:
    """'error' (IndexFileError / clear ValueError), 'same' (the original answer) or 'other' (another answer)."""
    try:
        index = load(path, mmap=mmap, verify=verify)
        D, I = _answer(index)
    except IndexFileError:
        return "error"
    except ValueError as e:  # a clear error at search time (e.g. codes out of range met by a checked scan)
        if verify:
            raise AssertionError(f"a verified load passed, then search raised {e}") from None
        return "error"
    assert D.shape == (5, 8) and I.shape == (5, 8) and D.dtype == torch.float32 and I.dtype == torch.int64
    same = torch.equal(I, expected[1]) and torch.equal(D, expected[0])
    return "same" if same else "other"


def _check(path, expected, allow_other_when_verified: bool = False) -> set[str]:
    seen = set()
    for mmap, verify in MODES:
        got = _outcome(path, mmap, verify, expected)
        if verify and not allow_other_when_verified:
            assert got in ("error", "same"), f"a verified load (mmap={mmap}) answered differently: silent garbage"
        seen.add(got)
    return seen


def test_byte_flips(saved, tmp_path):
    path, _, expected = saved
    raw = path.read_bytes()
    rng = np.random.default_rng(0)
    positions = sorted(set(rng.integers(0, len(raw), 60).tolist()) | {0, 7, 8, 12, 16, 24, 32, 40, len(raw) - 1})
    outcomes = []
    for pos in positions:
        bad = bytearray(raw)
        bad[pos] ^= 1 << int(rng.integers(8))
        p = tmp_path / "flip.sqret"
        p.write_bytes(bad)
        outcomes.append(_check(p, expected))
    assert sum("error" in o for o in outcomes) > len(outcomes) // 2  # most flips hit checked bytes


def test_truncations(saved, tmp_path):
    path, _, expected = saved
    raw = path.read_bytes()
    _, directory = filecraft.read(path)
    cuts = {0, 1, 8, 31, 63, 64, len(raw) - 1, len(raw) // 2}
    for s in directory["sections"].values():
        cuts |= {s["offset"], s["offset"] + s["nbytes"] // 2}
    for cut in sorted(cuts):
        p = tmp_path / "cut.sqret"
        p.write_bytes(raw[:cut])
        for mmap, verify in MODES:
            with pytest.raises(IndexFileError):
                load(p, mmap=mmap, verify=verify)


def _edits(directory: dict) -> list[tuple[str, callable, bool]]:
    """(name, edit of the directory dict, whether a loader may accept it): every field of every section, the
    meta fields, missing keys. Accepted edits change nothing the schema can check (e.g. the metric)."""
    edits = []
    for name, s in directory["sections"].items():
        for dt in ("<f4", "|u1", "<i8", "<i4", "<u8", "<c8", "<f2", "<f8", "|i1", "<i2"):
            if dt != s["dtype"]:
                edits.append((f"{name} dtype {dt}", lambda d, n=name, t=dt: d["sections"][n].update(dtype=t), False))
        for i in range(len(s["shape"])):
            for delta in (-1, 1):
                def shape(d, n=name, i=i, delta=delta):
                    d["sections"][n]["shape"][i] += delta
                edits.append((f"{name} shape[{i}] {delta:+}", shape, False))
        edits.append((f"{name} shape flattened", lambda d, n=name: d["sections"][n].update(
            shape=[int(np.prod(d["sections"][n]["shape"]))]), len(s["shape"]) == 1))
        for delta in (-64, 64, 1, -1, 1 << 40):
            edits.append((f"{name} offset {delta:+}", lambda d, n=name, v=delta: d["sections"][n].update(
                offset=d["sections"][n]["offset"] + v), False))
        edits.append((f"{name} offset 0", lambda d, n=name: d["sections"][n].update(offset=0), False))
        for delta in (-1, 1, 64):
            edits.append((f"{name} nbytes {delta:+}", lambda d, n=name, v=delta: d["sections"][n].update(
                nbytes=d["sections"][n]["nbytes"] + v), False))
        for key in ("dtype", "shape", "offset", "nbytes", "crc32"):
            edits.append((f"{name} without {key}", lambda d, n=name, k=key: d["sections"][n].pop(k), False))
        edits.append((f"without section {name}", lambda d, n=name: d["sections"].pop(n), False))
    meta = directory["meta"]
    for key in meta:
        edits.append((f"meta without {key}", lambda d, k=key: d["meta"].pop(k), False))
    values_of = {"nbits": [4, 8, 16, 0], "M": [1, 2, 8, 3, 0, -4], "d": [8, 32, 17, 0], "ntotal": [0, 599, 601],
                 "nlist": [1, 5, 7, 0], "kind": ["pq", "ivfpq", "hnsw", 3], "metric": ["ip", "l2", "cos"],
                 "fast_scan": [True, False, 1], "by_residual": [True, False, 1, "yes"], "exact": [True, False, 0, None]}
    for key, values in values_of.items():
        if key in meta:
            for v in values:
                if v != meta[key]:
                    semantic = (key == "metric" and v in ("ip", "l2")) or (key in ("exact", "by_residual") and
                                                                          type(v) is bool)
                    edits.append((f"meta {key} = {v!r}", lambda d, k=key, v=v: d["meta"].update({k: v}), semantic))
    return edits


def test_directory_edits_with_checksums_recomputed(saved, tmp_path):
    path, kind, expected = saved
    raw, directory = filecraft.read(path)
    accepted = 0
    for name, edit, may_accept in _edits(directory):
        d = json.loads(json.dumps(directory))
        edit(d)
        p = tmp_path / "edit.sqret"
        filecraft.write(p, raw, d)
        for mmap, verify in MODES:
            got = _outcome(p, mmap, verify, expected)
            if not may_accept:
                assert got == "error", f"{name}: loaded (mmap={mmap}, verify={verify}) and answered ({got})"
            accepted += got != "error"
    assert accepted > 0  # the metric edits load: the check does not reject everything


def _leaf(directory: dict) -> tuple[dict, str]:
    """The innermost index's meta and its section prefix (composites nest their base under 'base')."""
    meta, prefix = directory["meta"], ""
    while "base" in meta:
        meta, prefix = meta["base"], prefix + "base."
    return meta, prefix


def test_list_offsets_and_code_bytes_with_checksums_recomputed(saved, tmp_path):
    path, kind, expected = saved
    raw, directory = filecraft.read(path)
    leaf, prefix = _leaf(directory)
    nbits = leaf["nbits"]
    sections = {name[len(prefix):]: name for name in directory["sections"] if name.startswith(prefix)}
    cases = []
    if "list_offsets" in sections:
        base = np.frombuffer(bytes(filecraft.section_bytes(raw, directory, sections["list_offsets"])), np.int64).copy()
        for name, new in {"first 5": lambda o: np.r_[5, o[1:]], "negative": lambda o: np.r_[0, -1, o[2:]],
                          "decreasing": lambda o: np.r_[0, o[2], o[1], o[3:]], "last short": lambda o: np.r_[o[:-1],
                                                                                                        o[-1] - 1],
                          "beyond": lambda o: np.r_[o[:-1], o[-1] + 100], "huge": lambda o: np.r_[0, 1 << 62, o[2:]]
                          }.items():
            cases.append((name, sections["list_offsets"], new(base).astype(np.int64).tobytes(), "error"))
    if nbits == 4 and "codes" in sections:
        high = bytearray(bytes(filecraft.section_bytes(raw, directory, sections["codes"])))
        high[::7] = bytes([0xF0 | (b & 15) for b in high[::7]])
        cases.append(("codes >= 16", sections["codes"], bytes(high), "error-when-verified"))
    ids = bytearray(bytes(filecraft.section_bytes(raw, directory, sections["ids"])))
    ids[:8] = np.array([-5], np.int64).tobytes()
    cases.append(("negative id", sections["ids"], bytes(ids), "error-when-verified"))
    for name, section, content, rule in cases:
        bad = bytearray(raw)
        filecraft.section_bytes(bad, directory, section)[:] = content
        p = tmp_path / "data.sqret"
        filecraft.write(p, bad, directory)
        for mmap, verify in MODES:
            got = _outcome(p, mmap, verify, expected)
            if rule == "error" or verify:
                assert got == "error", f"{name}: loaded (mmap={mmap}, verify={verify}) and answered ({got})"
