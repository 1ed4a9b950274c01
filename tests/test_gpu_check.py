"""benchmarks/gpu_check.sh --dry-run on the CPU: every phase resolves (files, the GPU tests collect, no
TRITON_INTERPRET reaches the children, the phase budgets fit the 10-minute window)."""

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_gpu_check_dry_run(tmp_path):
    env = dict(os.environ, PYTHON=sys.executable, OUT=str(tmp_path), TRITON_INTERPRET="1")  # the script unsets it
    p = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_check.sh"), "--dry-run"], env=env, cwd=ROOT,
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stdout + p.stderr
    assert "dry run: ok" in p.stdout
    phases = [ln.split()[1] for ln in p.stdout.splitlines() if ln.startswith("phase ")]
    assert phases == ["build", "tests", "sanitizer", "bench", "train"]
    budgets = [int(ln.split()[2].rstrip("s")) for ln in p.stdout.splitlines() if ln.startswith("phase ")]
    assert sum(budgets) <= 600 - 20


def test_gpu_check_dry_run_fails_on_a_missing_step(tmp_path):
    """The dry run can fail: a copy of the checkout without the GPU benchmark file."""
    import shutil

    copy = tmp_path / "repo"
    shutil.copytree(ROOT, copy, ignore=shutil.ignore_patterns(".venv", ".git", "build", "*.so", "test_gpu_bench.py"))
    env = dict(os.environ, PYTHON=sys.executable, OUT=str(tmp_path / "out"))
    p = subprocess.run(["bash", str(copy / "benchmarks" / "gpu_check.sh"), "--dry-run"], env=env, cwd=copy,
                       capture_output=True, text=True, timeout=300)
    assert p.returncode != 0 and "missing benchmarks/test_gpu_bench.py" in p.stdout
