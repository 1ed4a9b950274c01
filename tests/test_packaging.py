"""`pip install .` (not editable) into a fresh target: the package, its kernels, the native CPU extension and
the `sqret` entry point work from outside the checkout; the version is written in one place."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

import sqret

tomllib = pytest.importorskip("tomllib")  # Python 3.11+

ROOT = Path(__file__).resolve().parents[1]


def test_project_metadata_has_one_version():
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert meta["name"] == "sqret" and meta["dynamic"] == ["version"]
    assert meta["scripts"]["sqret"] == "sqret.cli:main"
    assert "version=" not in (ROOT / "setup.py").read_text()


def test_pip_install_into_a_fresh_target(tmp_path):
    target = tmp_path / "site"
    env = dict(os.environ, SQRET_CUDA_ARCHS="none", SQRET_REQUIRE_NATIVE="1", PIP_DISABLE_PIP_VERSION_CHECK="1")
    p = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
                        "--target", str(target), str(ROOT)], env=env, capture_output=True, text=True, timeout=900)
    assert p.returncode == 0, p.stderr[-3000:]
    env["PYTHONPATH"] = str(target)
    code = ("import sqret, sqret_kernels, sqret._cpu, sqret.index, sqret.cli; "
            "print(sqret.__version__); print(sqret.__file__)")
    p = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True,
                       timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    version, where = p.stdout.split()
    assert version == sqret.__version__ and where.startswith(str(target))
    p = subprocess.run([sys.executable, str(target / "bin" / "sqret"), "--version"], cwd=tmp_path, env=env,
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 0 and sqret.__version__ in p.stdout + p.stderr, p.stderr[-2000:]
