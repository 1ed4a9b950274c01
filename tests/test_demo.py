"""The demo's pipeline end to end: sqret PQ beside FAISS IndexPQ on digits, via the CLI too."""

import subprocess
import sys

from sqret import demo


def test_demo_rows_are_sane_and_close_to_faiss():
    rows = demo.run(seed=0)
    assert rows[0].recall10 == 1.0
    ours = [r for r in rows if r.system == "sqret PQ"]
    theirs = [r for r in rows if r.system == "faiss IndexPQ"]
    assert len(ours) == len(theirs) == len(demo.CONFIGS)
    for a, b in zip(ours, theirs, strict=True):
        assert (a.M, a.nbits) == (b.M, b.nbits)
        assert 0.3 < a.recall10 <= 1 and abs(a.recall10 - b.recall10) < 0.05
        assert abs(a.map100 - b.map100) < 0.03
    assert "| sqret PQ | 8 | 4 | 32 |" in demo.format_table(rows)


def test_cli_lists_backends():
    out = subprocess.run([sys.executable, "-m", "sqret", "backends"], capture_output=True, text=True)
    assert out.returncode == 0 and "reference" in out.stdout and "available" in out.stdout
