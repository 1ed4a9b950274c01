"""Build sqret: pure Python, plus the native extensions in csrc/ where a compiler / CUDA toolkit is found.

csrc/cpu/*.cpp  -> sqret._cpu   (pybind11, OpenMP), built when a C++ compiler works
csrc/cuda/*.cu  -> sqret._cuda  (pybind11 + nvcc), built when nvcc is found
A native build that fails is reported and skipped (set SQRET_REQUIRE_NATIVE=1 to make it fatal), so
that the package always installs; sqret.backends() then says why a backend is unavailable.
"""

import os
import shutil
import subprocess
import sys
from pathlib import Path

from setuptools import setup
from setuptools.command.build_ext import build_ext

ROOT = Path(__file__).parent


def native_extensions():
    exts = []
    cpu = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "csrc" / "cpu").glob("*.cpp"))
    if cpu:
        from pybind11.setup_helpers import Pybind11Extension

        exts.append(
            Pybind11Extension(
                "sqret._cpu",
                cpu,
                # the headers too: an edit of one rebuilds the module
                depends=sorted(str(p.relative_to(ROOT)) for p in (ROOT / "csrc" / "cpu").glob("*.h")),
                # no FMA contraction: every code path (SIMD level, batch size) rounds the same sums alike
                extra_compile_args=["-O3", "-ffp-contract=off", "-fopenmp", "-Wall", "-Wno-psabi",
                                    "-Wno-maybe-uninitialized"],
                extra_link_args=["-fopenmp"],
                cxx_std=17,
            )
        )
    cuda = cuda_extension()
    if cuda is not None:
        exts.append(cuda)
    return exts


def _nvcc():
    """(nvcc, CUDA home): $CUDA_HOME, else /usr/local/cuda, else the folder above the nvcc on PATH."""
    for home in (os.environ.get("CUDA_HOME"), "/usr/local/cuda"):
        if home and (Path(home) / "bin" / "nvcc").exists():
            return str(Path(home) / "bin" / "nvcc"), Path(home)
    found = shutil.which("nvcc")
    return (found, Path(os.path.realpath(found)).parent.parent) if found else (None, None)


def cuda_extension():
    """sqret._cuda: csrc/cuda/*.cu compiled by nvcc (sm_80, sm_90 and PTX), bound by module.cpp, cudart static."""
    sources = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "csrc" / "cuda").glob("*.cu"))
    nvcc, home = _nvcc()
    if not sources or nvcc is None or CUDA_ARCHS.strip().lower() == "none":
        return None
    from pybind11.setup_helpers import Pybind11Extension

    ext = Pybind11Extension(
        "sqret._cuda",
        ["csrc/cuda/module.cpp"],
        include_dirs=[str(home / "include")],
        library_dirs=[str(home / "lib64"), str(home / "lib")],
        libraries=["cudart_static", "dl", "rt", "pthread"],
        cxx_std=17,
    )
    ext.cuda_sources = sources
    ext.nvcc = nvcc
    return ext


CUDA_ARCHS = os.environ.get("SQRET_CUDA_ARCHS", "80;90")  # "none": no CUDA extension


class OptionalBuildExt(build_ext):
    """Build each native extension if possible; never fail the install unless asked to."""

    def build_extension(self, ext):
        if getattr(ext, "cuda_sources", None):
            archs = [a.strip() for a in CUDA_ARCHS.split(";") if a.strip()]
            gencode = [f"-gencode=arch=compute_{a},code=sm_{a}" for a in archs]
            gencode.append(f"-gencode=arch=compute_{archs[-1]},code=compute_{archs[-1]}")  # PTX for newer GPUs
            Path(self.build_temp).mkdir(parents=True, exist_ok=True)
            objects = []
            for src in ext.cuda_sources:
                obj = str(Path(self.build_temp) / (Path(src).stem + ".cu.o"))
                cmd = [ext.nvcc, "-O3", "-std=c++17", "-Xcompiler", "-fPIC", "-Icsrc/cuda", *gencode, "-c", src,
                       "-o", obj]
                print(" ".join(cmd), file=sys.stderr)
                subprocess.check_call(cmd, cwd=ROOT)
                objects.append(obj)
            ext.extra_objects = objects
        super().build_extension(ext)

    def build_extensions(self):
        for ext in list(self.extensions):
            try:
                self.build_extension(ext)
            except Exception as err:  # compiler missing or failing: stay pure Python
                if os.environ.get("SQRET_REQUIRE_NATIVE") == "1":
                    raise
                print(f"sqret: skipping native extension {ext.name}: {err}", file=sys.stderr)
                self.extensions.remove(ext)


# Metadata (name, version from sqret.__version__, dependencies, the sqret entry point): pyproject.toml.
setup(ext_modules=native_extensions(), cmdclass={"build_ext": OptionalBuildExt})
