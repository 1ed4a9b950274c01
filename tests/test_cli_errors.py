"""The CLI speaks to people: every bad invocation exits non-zero with one line on stderr that names the
argument and what is wrong, never a traceback; silent no-ops warn. Most run in-process through
``sqret.cli.main`` (the same code path, without a Python start per case); a few as real processes check the
exit status and ``--debug`` / ``SQRET_DEBUG``."""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from sqret import cli
from sqret.data import read_fvecs

D = 16


def _fvecs(path: Path, a: np.ndarray, kind=np.float32) -> Path:
    a = np.asarray(a, kind)
    rows = np.concatenate([np.full((a.shape[0], 1), a.shape[1], np.int32).view(kind), a], axis=1)
    rows.tofile(path)
    return path


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    t = tmp_path_factory.mktemp("cli")
    rng = np.random.default_rng(0)
    base = rng.standard_normal((600, D)).astype(np.float32)
    queries = rng.standard_normal((20, D)).astype(np.float32)
    gt = np.argsort(((queries[:, None] - base[None]) ** 2).sum(-1), axis=1)[:, :10].astype(np.int32)
    f = {"base": _fvecs(t / "base.fvecs", base), "queries": _fvecs(t / "queries.fvecs", queries),
         "gt": _fvecs(t / "gt.ivecs", gt, np.int32), "dir": t / "folder"}
    f["dir"].mkdir()
    (t / "empty.fvecs").write_bytes(b"")
    f["empty"] = t / "empty.fvecs"
    (t / "garbage.fvecs").write_bytes(b"\xff\xff\xff\x7fhello world")
    f["garbage"] = t / "garbage.fvecs"
    for name, arr in {"one_d": np.zeros(16, np.float32), "three_d": np.zeros((2, 3, 16), np.float32),
                      "strings": np.array([["a"] * 16]), "nan_q": np.full((2, D), np.nan, np.float32),
                      "q17": np.zeros((3, D + 1), np.float32), "gt_rows": gt[:5].astype(np.int64),
                      "gt_neg": np.full((20, 10), -1, np.int64), "gt_float": gt.astype(np.float32),
                      "gt_far": gt.astype(np.int64) + 10_000}.items():
        np.save(t / f"{name}.npy", arr)
        f[name] = t / f"{name}.npy"
    with open(t / "objects.npy", "wb") as fh:
        np.save(fh, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    f["objects"] = t / "objects.npy"
    (t / "notes.txt").write_text("hello")
    f["txt"] = t / "notes.txt"
    f["pq"], f["ivf"] = t / "pq.sqret", t / "ivf.sqret"
    for name, extra in (("pq", []), ("ivf", ["--nlist", "4"])):
        rc, _, err = _run(["index", "build", "--data", str(f["base"]), "--index", str(f[name]), "-M", "4",
                           "--nbits", "4", "--iters", "2", *extra])
        assert rc == 0, err
    raw = f["pq"].read_bytes()
    (t / "trunc.sqret").write_bytes(raw[: len(raw) // 2])
    f["trunc"] = t / "trunc.sqret"
    f["ckpt"] = t / "spq.pt"
    rc, _, err = _run(["train", "--method", "spq", "--epochs", "1", "--bits", "16", "--width", "8",
                       "--batch-size", "256", "--map-at", "20", "--checkpoint", str(f["ckpt"])])
    assert rc == 0, err
    (t / "random.pt").write_bytes(os.urandom(3000))
    f["random_pt"] = t / "random.pt"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {t / 'PWNED'}",))

    torch.save({"format": "sqret-checkpoint", "version": 1, "state": {"x": Evil()}, "sha256": ""}, t / "evil.pt")
    with open(t / "evil_raw.pt", "wb") as fh:
        pickle.dump(Evil(), fh)
    f["evil_raw"] = t / "evil_raw.pt"
    f["evil"] = t / "evil.pt"
    f["pwned"] = t / "PWNED"
    return f


def _run(argv: list[str]) -> tuple[int, str, str]:
    """sqret.cli.main(argv) in-process: (exit status, stdout, stderr)."""
    import contextlib
    import io

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            rc = cli.main(argv)
        except SystemExit as e:  # argparse
            rc = e.code if isinstance(e.code, int) else 1
    return rc, out.getvalue(), err.getvalue()


def S(f, key):  # noqa: N802 - a path argument as text
    return str(f[key])


BAD = [  # (name, argv builder, text the one line must contain)
    ("build: missing data", lambda f: ["index", "build", "--data", "nope.fvecs", "--index", "o.sqret", "-M", "4"],
     "--data nope.fvecs: no such file"),
    ("build: data is a folder", lambda f: ["index", "build", "--data", S(f, "dir"), "--index", "o", "-M", "4"],
     "is a directory"),
    ("build: unknown suffix", lambda f: ["index", "build", "--data", S(f, "txt"), "--index", "o", "-M", "4"],
     "unknown vector file type"),
    ("build: index file as data", lambda f: ["index", "build", "--data", S(f, "pq"), "--index", "o", "-M", "4"],
     "unknown vector file type"),
    ("build: empty data", lambda f: ["index", "build", "--data", S(f, "empty"), "--index", "o", "-M", "4"],
     "holds no vectors"),
    ("build: garbage data", lambda f: ["index", "build", "--data", S(f, "garbage"), "--index", "o", "-M", "4"],
     "not a .fvecs file"),
    ("build: 1-D npy", lambda f: ["index", "build", "--data", S(f, "one_d"), "--index", "o", "-M", "4"],
     "expected a 2-D array"),
    ("build: 3-D npy", lambda f: ["index", "build", "--data", S(f, "three_d"), "--index", "o", "-M", "4"],
     "expected a 2-D array"),
    ("build: string npy", lambda f: ["index", "build", "--data", S(f, "strings"), "--index", "o", "-M", "4"],
     "expected numbers"),
    ("build: object npy", lambda f: ["index", "build", "--data", S(f, "objects"), "--index", "o", "-M", "4"],
     "not a numeric .npy array"),
    ("build: M 0", lambda f: ["index", "build", "--data", S(f, "base"), "--index", "o", "-M", "0"],
     "argument -M/--m: must be an int >= 1"),
    ("build: M not dividing d", lambda f: ["index", "build", "--data", S(f, "base"), "--index", "o", "-M", "5"],
     "--m 5 does not divide the dimension d = 16"),
    ("build: M text", lambda f: ["index", "build", "--data", S(f, "base"), "--index", "o", "-M", "four"],
     "must be an int >= 1, got 'four'"),
    ("build: chunk -5", lambda f: ["index", "build", "--data", S(f, "base"), "--index", "o", "-M", "4",
                                   "--chunk", "-5"],
     "argument --chunk: must be an int >= 1, got -5"),
    ("build: chunk 0", lambda f: ["index", "build", "--data", S(f, "base"), "--index", "o", "-M", "4", "--chunk", "0"],
     "argument --chunk"),
    ("build: train-size 0", lambda f: ["index", "build", "--data", S(f, "base"), "--index", "o", "-M", "4",
                                       "--train-size", "0"], "argument --train-size"),
    ("build: iters 0", lambda f: ["index", "build", "--data", S(f, "base"), "--index", "o", "-M", "4", "--iters", "0"],
     "argument --iters"),
    ("build: nlist -1", lambda f: ["index", "build", "--data", S(f, "base"), "--index", "o", "-M", "4",
                                   "--nlist", "-1"],
     "argument --nlist"),
    ("build: nlist > vectors", lambda f: ["index", "build", "--data", S(f, "base"), "--index", "o", "-M", "4",
                                          "--ivf", "5000"], "nlist = 5000 is more than the 600 training vectors"),
    ("build: nbits 6", lambda f: ["index", "build", "--data", S(f, "base"), "--index", "o", "-M", "4", "--nbits", "6"],
     "argument --nbits: invalid choice"),
    ("build: metric cos", lambda f: ["index", "build", "--data", S(f, "base"), "--index", "o", "-M", "4",
                                     "--metric", "cos"], "argument --metric: invalid choice"),
    ("build: output folder missing", lambda f: ["index", "build", "--data", S(f, "base"), "--index", "/no/such/o.sqret",
                                                "-M", "4"], "folder /no/such does not exist"),
    ("build: output is a folder", lambda f: ["index", "build", "--data", S(f, "base"), "--index", S(f, "dir"),
                                             "-M", "4"], "--index"),
    ("build: no -M", lambda f: ["index", "build", "--data", S(f, "base"), "--index", "o"],
     "pass -M / --m"),
    ("search: missing index", lambda f: ["search", "--index", "nope.sqret", "--queries", S(f, "queries")],
     "--index nope.sqret: no such file"),
    ("search: vectors as index", lambda f: ["search", "--index", S(f, "base"), "--queries", S(f, "queries")],
     "not a sqret index file"),
    ("search: folder as index", lambda f: ["search", "--index", S(f, "dir"), "--queries", S(f, "queries")],
     "is a directory"),
    ("search: truncated index", lambda f: ["search", "--index", S(f, "trunc"), "--queries", S(f, "queries")],
     "truncated"),
    ("search: missing queries", lambda f: ["search", "--index", S(f, "pq"), "--queries", "nope.fvecs"],
     "--queries nope.fvecs: no such file"),
    ("search: dims differ", lambda f: ["search", "--index", S(f, "pq"), "--queries", S(f, "q17")],
     "has d = 17, the index has d = 16"),
    ("search: empty queries", lambda f: ["search", "--index", S(f, "pq"), "--queries", S(f, "empty")],
     "holds no vectors"),
    ("search: 3-D queries", lambda f: ["search", "--index", S(f, "pq"), "--queries", S(f, "three_d")],
     "expected a 2-D array"),
    ("search: NaN queries", lambda f: ["search", "--index", S(f, "pq"), "--queries", S(f, "nan_q")],
     "holds NaN or inf"),
    ("search: k 0", lambda f: ["search", "--index", S(f, "pq"), "--queries", S(f, "queries"), "-k", "0"],
     "argument -k: must be an int >= 1"),
    ("search: k -3", lambda f: ["search", "--index", S(f, "pq"), "--queries", S(f, "queries"), "-k", "-3"],
     "argument -k"),
    ("search: batch 0", lambda f: ["search", "--index", S(f, "pq"), "--queries", S(f, "queries"), "--batch", "0"],
     "argument --batch"),
    ("search: nprobe 0", lambda f: ["search", "--index", S(f, "ivf"), "--queries", S(f, "queries"), "--nprobe", "0"],
     "argument --nprobe"),
    ("search: gt rows", lambda f: ["search", "--index", S(f, "pq"), "--queries", S(f, "queries"), "--groundtruth",
                                   S(f, "gt_rows")], "has 5 rows, but there are 20 queries"),
    ("search: gt all -1", lambda f: ["search", "--index", S(f, "pq"), "--queries", S(f, "queries"), "--groundtruth",
                                     S(f, "gt_neg")], "holds no neighbour ids"),
    ("search: gt floats", lambda f: ["search", "--index", S(f, "pq"), "--queries", S(f, "queries"), "--groundtruth",
                                     S(f, "gt_float")], "expected integer neighbour ids"),
    ("search: gt missing", lambda f: ["search", "--index", S(f, "pq"), "--queries", S(f, "queries"), "--groundtruth",
                                      "gt.ivecs"], "--groundtruth gt.ivecs: no such file"),
    ("index search: k 0", lambda f: ["index", "search", "--index", S(f, "pq"), "--queries", S(f, "queries"), "-k",
                                     "0"], "argument -k"),
    ("train: epochs -2", lambda f: ["train", "--epochs", "-2"], "argument --epochs: must be an int >= 1, got -2"),
    ("train: epochs 0", lambda f: ["train", "--epochs", "0"], "argument --epochs"),
    ("train: batch 0", lambda f: ["train", "--batch-size", "0"], "argument --batch-size"),
    ("train: lr 0", lambda f: ["train", "--lr", "0"], "argument --lr: must be a finite number > 0"),
    ("train: lr -1", lambda f: ["train", "--lr", "-1"], "argument --lr"),
    ("train: lr nan", lambda f: ["train", "--lr", "nan"], "argument --lr"),
    ("train: bits 0", lambda f: ["train", "--bits", "0"], "argument --bits"),
    ("train: bits 30", lambda f: ["train", "--bits", "30", "--epochs", "1"], "--method spq --bits 30"),
    ("train: unknown method", lambda f: ["train", "--method", "nope"], "argument --method: invalid choice"),
    ("train: resume, no checkpoint", lambda f: ["train", "--resume"], "--resume needs --checkpoint"),
    ("train: resume, missing file", lambda f: ["train", "--resume", "--checkpoint", "none.pt"],
     "--checkpoint none.pt: no such file"),
    ("train: resume another method", lambda f: ["train", "--resume", "--checkpoint", S(f, "ckpt"), "--method", "dpq",
                                                "--bits", "16", "--width", "8", "--epochs", "3"],
     "name: checkpoint 'spq', asked for 'dpq'"),
    ("train: resume other bits", lambda f: ["train", "--resume", "--checkpoint", S(f, "ckpt"), "--bits", "32",
                                            "--width", "8", "--epochs", "3"], "bits: checkpoint 16, asked for 32"),
    ("train: resume, nothing left", lambda f: ["train", "--resume", "--checkpoint", S(f, "ckpt"), "--bits", "16",
                                               "--width", "8", "--epochs", "1"], "has already trained 1 epochs"),
    ("train: resume a random file", lambda f: ["train", "--resume", "--checkpoint", S(f, "random_pt"), "--epochs", "3"],
     "not a readable checkpoint"),
    ("train: device cuda", lambda f: ["train", "--device", "cuda"], "--device cuda"),
    ("train: device nonsense", lambda f: ["train", "--device", "gpu7"], "--device gpu7: not a device"),
    ("train: mnist elsewhere", lambda f: ["train", "--dataset", "mnist", "--data", "/no/such/mnist"],
     "--data /no/such/mnist: no such file or directory"),
    ("train: batch > images", lambda f: ["train", "--batch-size", "100000", "--epochs", "1"],
     "--batch-size 100000 is larger than the"),
    ("train: weights missing", lambda f: ["train", "--weights", "w.pt"], "--weights w.pt: no such file"),
    ("train: checkpoint folder missing", lambda f: ["train", "--checkpoint", "/no/such/c.pt"],
     "folder /no/such does not exist"),
    ("eval: missing", lambda f: ["eval", "nope.pt"], "CHECKPOINT nope.pt: no such file"),
    ("eval: folder", lambda f: ["eval", S(f, "dir")], "is a directory"),
    ("eval: random bytes", lambda f: ["eval", S(f, "random_pt")], "not a readable checkpoint"),
    ("eval: code in the file", lambda f: ["eval", S(f, "evil")], "refused"),
    ("eval: a bare pickle", lambda f: ["eval", S(f, "evil_raw")], "not a torch zip archive"),
    ("eval: an index", lambda f: ["eval", S(f, "pq")], "CHECKPOINT"),
    ("eval: map-at 0", lambda f: ["eval", S(f, "ckpt"), "--map-at", "0"], "argument --map-at"),
    ("eval: pr -1", lambda f: ["eval", S(f, "ckpt"), "--pr", "-1"], "argument --pr"),
    ("no command", lambda f: [], "the following arguments are required: command"),
    ("unknown command", lambda f: ["serve"], "invalid choice: 'serve'"),
]


@pytest.mark.parametrize("name", [b[0] for b in BAD])
def test_bad_invocations_end_in_one_line(files, name):
    _, argv, want = next(b for b in BAD if b[0] == name)
    rc, out, err = _run(argv(files))
    lines = err.strip().splitlines()
    assert rc != 0, (rc, out, err)
    assert len(lines) == 1, err
    assert "Traceback" not in err and want in lines[0], lines[0]
    assert lines[0].startswith("sqret"), lines[0]
    assert not files["pwned"].exists()


def test_silent_no_ops_warn(files):
    rc, out, err = _run(["search", "--index", S(files, "pq"), "--queries", S(files, "queries"), "--nprobe", "4"])
    assert rc == 0 and "--nprobe is ignored" in err and "QPS warm" in out, (out, err)
    rc, out, err = _run(["search", "--index", S(files, "pq"), "--queries", S(files, "queries"), "--groundtruth",
                         S(files, "gt_far")])
    assert rc == 0 and "no result matches any --groundtruth id" in err, err
    rc, out, err = _run(["search", "--index", S(files, "ivf"), "--queries", S(files, "queries"), "--nprobe", "9",
                         "--groundtruth", S(files, "gt")])
    assert rc == 0 and "every list is scanned" in err and "1-recall@1" in out, (out, err)
    rc, out, err = _run(["eval", S(files, "ckpt"), "--all-lengths", "--map-at", "20"])
    assert rc == 0 and "--all-lengths is ignored" in err, err


def test_processes_exit_non_zero_without_a_traceback_unless_asked(files):
    run = [sys.executable, "-m", "sqret"]
    bad = ["search", "--index", S(files, "base"), "--queries", S(files, "queries")]
    p = subprocess.run(run + bad, capture_output=True, text=True)
    assert p.returncode == 2 and "Traceback" not in p.stderr and len(p.stderr.strip().splitlines()) == 1, p.stderr
    p = subprocess.run(run + ["index", "build", "--data", S(files, "base"), "--index", "o", "-M", "4", "--chunk", "-5"],
                       capture_output=True, text=True)
    assert p.returncode == 2 and "--chunk" in p.stderr and len(p.stderr.strip().splitlines()) == 1, p.stderr
    p = subprocess.run(run + bad + ["--debug"], capture_output=True, text=True)
    assert p.returncode != 0 and "Traceback" in p.stderr
    p = subprocess.run(run + bad, capture_output=True, text=True, env={**os.environ, "SQRET_DEBUG": "1"})
    assert p.returncode != 0 and "Traceback" in p.stderr
    p = subprocess.run(run + ["--version"], capture_output=True, text=True)
    assert p.returncode == 0 and p.stdout.startswith("sqret ")


def test_the_fixture_data_is_what_the_cases_assume(files):
    assert read_fvecs(files["base"]).shape == (600, D)
    assert torch.load  # the checkpoint fixture trained: the resume cases test its spec
    assert files["ckpt"].exists()
