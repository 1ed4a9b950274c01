"""Static proof of the GPU kernels without a GPU (``make gpu-static``, run by ``make test``).

Every Triton kernel of ``sqret_kernels`` is compiled ahead of time (``triton.compile`` on an ``ASTSource``, the
whole pipeline down to a cubin) over every configuration its launcher or autotuner can pick, for each input
dtype, for sm_80 and sm_90 (and the hot ones for sm_100 where the bundled ptxas takes it); ptxas's own report
gives registers, stack frame, spill stores and shared memory. ``csrc/cuda`` is compiled with ``nvcc -Xptxas
-v`` where nvcc exists. Results: ``benchmarks/results/gpu_static.json`` (one record per kernel, configuration
and arch) and ``gpu_static.md``. Exit status 1 on a compile failure, on spills or a stack frame in any
configuration of the soft kernels or in a hot configuration of the others (the shapes the GPU benchmarks
use), or on shared memory above the arch's limit or above the
estimate by which ``sqret_kernels.soft`` prunes its autotune lists before a GPU sees them.

    python benchmarks/gpu_static.py [--jobs N] [--arch 80,90,100] [--quick]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import re
import shutil
import subprocess
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

os.environ.pop("TRITON_INTERPRET", None)  # compiled kernels, not the interpreter
os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")
os.environ["TRITON_ALWAYS_COMPILE"] = "1"  # ptxas reports only on a real compile, never from Triton's cache

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
RESULTS = ROOT / "benchmarks" / "results"
SMEM_LIMIT = {80: 166912, 90: 232448, 100: 232448}  # opt-in shared memory per block, bytes
FULL_ARCHS = (80, 90)  # every configuration; other archs (sm_100): the hot ones
DTYPES = {"fp32": "fp32", "bf16": "bf16", "fp16": "fp16"}
HOT_SOFT = {16, 64}  # the d of benchmarks/test_gpu_bench.py's soft_quantize cases (d = 16, 64)


def _sig(fn, types: dict[str, str], constexprs: dict) -> dict[str, str]:
    """Signature of every argument: pointer / scalar types given, constexpr for the rest."""
    return {a: ("constexpr" if a in constexprs else types[a]) for a in fn.arg_names}


def jobs(quick: bool) -> list[dict]:
    """Every (kernel, constexprs, options) the launchers and autotuners can produce."""
    from sqret_kernels import adc, ivf, lut, soft

    out = []
    soft_kernels = [("_soft_fwd", soft._soft_fwd, {}, "x_ptr c_ptr z_ptr".split()),
                    ("_probs_fwd", soft._probs_fwd, {}, "x_ptr c_ptr p_ptr".split()),
                    ("_encode", soft._encode, {}, "x_ptr c_ptr".split()),
                    ("_soft_bwd_rows", soft._soft_bwd_rows, {"PROBS": (0, 1)}, "x_ptr c_ptr".split()),
                    ("_soft_bwd_codewords", soft._soft_bwd_codewords, {"PROBS": (0, 1)}, "x_ptr c_ptr".split())]
    ints = {"B", "K", "M", "d", "sxb", "scm", "sck", "szb", "sgb", "per_split"}
    for name, _, extra, typed in soft_kernels:
        fn = _kernel("soft", name)
        backward = name.startswith("_soft_bwd")
        for dt in (("fp32",) if quick else DTYPES):
            # every (BLOCK_D, SPLIT) the launcher picks: one tile up to its widest, then chunks (any d beyond)
            variants = sorted({tuple(soft.lanes(d, dt == "fp32", backward).items()) for d in range(1, 260)})
            for bd, split in ((v[0][1], v[1][1]) for v in variants[:: 3 if quick else 1]):
                for cfg in soft.configs(bd, backward=backward, split=split):
                    for probs in extra.get("PROBS", (None,)):
                        const = {"METRIC": 0, "IEEE": dt == "fp32", "SPLIT": split, "BLOCK_B": cfg.kwargs["BLOCK_B"],
                                 "BLOCK_K": cfg.kwargs["BLOCK_K"], "BLOCK_D": bd}
                        if probs is not None:
                            const["PROBS"] = probs
                        types = {a: ("*" + DTYPES[dt] if a in typed else "*fp32") for a in fn.arg_names
                                 if a.endswith("_ptr")}
                        types.update({a: "i32" for a in ints} | {"inv_tau": "fp32"})
                        if name == "_encode":
                            types["out_ptr"] = "*i32"
                        out.append(dict(kernel=name, module="soft", dtype=dt, constexprs=const,
                                        signature=_sig(fn, types, const), num_warps=cfg.num_warps,
                                        num_stages=cfg.num_stages, hot=bd in HOT_SOFT and dt in ("fp32", "bf16"),
                                        strict=True,
                                        smem_estimate=soft.smem_estimate(cfg, bd)))
    lut_tiles = sorted({lut.lut_config(64, K, d) for K in (16, 32, 64, 256) for d in (1, 16, 32, 64, 128)})
    for dt in DTYPES:  # build_lut: every (BLOCK_Q, BLOCK_K, BLOCK_D) lut_config picks for K <= 256, d <= 128
        for bq, bk, bd in lut_tiles:
            const = {"METRIC": 0, "IEEE": dt == "fp32", "BLOCK_Q": bq, "BLOCK_K": bk, "BLOCK_D": bd}
            types = {"q_ptr": "*" + dt, "c_ptr": "*" + dt, "out_ptr": "*fp32"} | {
                a: "i32" for a in ("Q", "K", "M", "d", "sqb", "scm", "sck")}
            out.append(dict(kernel="_lut", module="lut", dtype=dt, constexprs=const,
                            signature=_sig(lut._lut, types, const), num_warps=4, num_stages=3, hot=bd <= 64))
    for packed in (0, 1):
        for bd in (1, 2, 4, 8, 16, 32, 64, 128):
            const = {"PACKED": packed, "BLOCK_N": 128, "BLOCK_D": bd}
            types = {"codes_ptr": "*u8", "c_ptr": "*fp32", "out_ptr": "*fp32"} | {
                a: "i32" for a in ("N", "K", "M", "d", "scn")}
            out.append(dict(kernel="_decode", module="lut", dtype="fp32", constexprs=const,
                            signature=_sig(lut._decode, types, const), num_warps=4, num_stages=3, hot=bd == 16))
    keeps = (1, 10, 32, 100, 1024) if quick else adc.KEEP_SAMPLES
    for packed in (0, 1):
        for keep in keeps:
            for bq in (1, 2, 4):
                cfg = adc.stream_config(keep, bq)
                const = {"KEEP": keep, "KP": cfg["KP"], "PACKED": packed, "SELECT": cfg["SELECT"],
                         "BLOCK_Q": bq, "BLOCK_N": cfg["BLOCK_N"]}
                types = {"lut_ptr": "*fp32", "codes_ptr": "*u8", "keys_ptr": "*i64", "sign": "fp32"} | {
                    a: "i32" for a in ("Q", "N", "M", "K", "scn", "per_prog")}
                out.append(dict(kernel="_adc_stream", module="adc", dtype="fp32", constexprs=const,
                                signature=_sig(adc._adc_stream, types, const), num_warps=cfg["num_warps"],
                                num_stages=3, hot=keep in (1, 10, 100) and packed == 0))
        const = {"PACKED": packed, "BLOCK_Q": 4, "BLOCK_N": 256}
        types = {"lut_ptr": "*fp32", "codes_ptr": "*u8", "out_ptr": "*fp32"} | {
            a: "i32" for a in ("Q", "N", "M", "K", "scn")}
        out.append(dict(kernel="_adc_dist", module="adc", dtype="fp32", constexprs=const,
                        signature=_sig(adc._adc_dist, types, const), num_warps=4, num_stages=3, hot=False))
    for packed in (0, 1):  # IVF scan of probed lists
        for keep in ((1, 10, 100) if quick else adc.KEEP_SAMPLES):
            cfg = ivf.scan_config(keep)
            const = {"KEEP": keep, "KP": cfg["KP"], "PACKED": packed, "SELECT": cfg["SELECT"],
                     "BLOCK_N": cfg["BLOCK_N"], "SHARED": packed}  # both table layouts, over the two packings
            types = {"lut_ptr": "*fp32", "codes_ptr": "*u8", "list_ptr": "*i64",
                     "offsets_ptr": "*i64", "bias_ptr": "*fp32", "keys_ptr": "*i64", "sign": "fp32"} | {
                a: "i32" for a in ("P", "M", "K", "scn", "per_prog", "splits")}
            out.append(dict(kernel="_ivf_scan", module="ivf", dtype="fp32", constexprs=const,
                            signature=_sig(ivf._ivf_scan, types, const), num_warps=cfg["num_warps"],
                            num_stages=3, hot=keep in (10, 100) and packed == 0))
    return out


def _kernel(module: str, name: str):
    import importlib

    from triton.runtime import Autotuner

    k = getattr(importlib.import_module(f"sqret_kernels.{module}"), name)
    return k.fn if isinstance(k, Autotuner) else k


PTXAS = re.compile(r"Used (\d+) registers")
STACK = re.compile(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads")


def compile_one(job: dict, arch: int) -> dict:
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    triton.knobs.nvidia.dump_ptxas_log = True
    rec = {k: job[k] for k in ("kernel", "dtype", "hot", "strict") if k in job}
    rec["config"] = dict(job["constexprs"], num_warps=job["num_warps"], num_stages=job["num_stages"])
    rec["arch"] = f"sm_{arch}"
    fn = _kernel(job["module"], job["kernel"])
    log = io.StringIO()
    try:
        with contextlib.redirect_stdout(log):
            k = triton.compile(ASTSource(fn, job["signature"], job["constexprs"]),
                               target=GPUTarget("cuda", arch, 32),
                               options={"num_warps": job["num_warps"], "num_stages": job["num_stages"]})
    except Exception as e:  # noqa: BLE001 - recorded, and fails the run
        return rec | {"compiled": False, "error": f"{type(e).__name__}: {str(e).splitlines()[0][:300]}"}
    text = log.getvalue()
    regs, stack = PTXAS.findall(text), STACK.findall(text)
    if not regs:
        return rec | {"compiled": False, "error": "no ptxas report (a cached kernel?)"}
    rec |= {"compiled": True, "regs": int(regs[-1]) if regs else None,
            "stack_bytes": int(stack[-1][0]) if stack else None,
            "spill_bytes": int(stack[-1][1]) + int(stack[-1][2]) if stack else None,
            "smem_bytes": int(k.metadata.shared)}
    if "smem_estimate" in job:
        rec["smem_estimate"] = job["smem_estimate"]
    return rec


def _run(args):
    return compile_one(*args)


def archs_supported(requested: list[int]) -> list[int]:
    """The archs the bundled ptxas compiles a trivial kernel for."""
    import triton
    import triton.language as tl
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    @triton.jit
    def _probe(p):
        tl.store(p, 1.0)

    ok = []
    for arch in requested:
        try:
            triton.compile(ASTSource(_probe, {"p": "*fp32"}), target=GPUTarget("cuda", arch, 32))
            ok.append(arch)
        except Exception as e:  # noqa: BLE001
            print(f"sm_{arch}: not compiled by the bundled ptxas ({type(e).__name__}); skipped", flush=True)
    return ok


def nvcc_report() -> list[dict]:
    """csrc/cuda through nvcc -Xptxas -v: registers, stack and spills per kernel (empty without nvcc). Every
    instantiation counts as hot (none may spill or keep an array on the stack) but the ADC scan's byte-wise
    variants (rows other than 16 bytes: not the benchmark shapes), which are recorded."""
    nvcc = shutil.which("nvcc") or next((p for p in ("/usr/local/cuda/bin/nvcc",) if Path(p).exists()), None)
    if nvcc is None:
        print("nvcc not found: csrc/cuda not compiled", flush=True)
        return []
    import pybind11
    import torch.utils.cpp_extension as ce

    out = []
    for src in sorted((ROOT / "csrc" / "cuda").glob("*.cu")):
        for arch in (80, 90):
            cmd = [nvcc, "-c", str(src), "-o", os.devnull, f"-arch=sm_{arch}", "-O3", "-std=c++17",
                   "-Xptxas", "-v", f"-I{ROOT / 'csrc'}", f"-I{pybind11.get_include()}",
                   *[f"-I{p}" for p in ce.include_paths()], "-I" + __import__("sysconfig").get_paths()["include"]]
            p = subprocess.run(cmd, capture_output=True, text=True)
            if p.returncode:
                out.append({"kernel": src.name, "arch": f"sm_{arch}", "compiled": False,
                            "error": p.stderr.strip().splitlines()[-1][:300] if p.stderr.strip() else "nvcc failed"})
                continue
            fn = None
            for ln in p.stderr.splitlines():
                m = (re.search(r"Compiling entry function '([^']+)'", ln)
                     or re.search(r"Function properties for (\S+)", ln))
                if m:
                    fn = m.group(1)
                s = STACK.search(ln)
                if s and fn:
                    hot = not re.search(r"adc_(stream|warp)ILi\dELb[01]ELb0E", fn)  # ROW16 = false: byte-wise rows
                    out.append({"kernel": f"{src.name}:{fn}", "arch": f"sm_{arch}", "compiled": True, "hot": hot,
                                "stack_bytes": int(s.group(1)), "spill_bytes": int(s.group(2)) + int(s.group(3))})
                r = PTXAS.search(ln)
                if r and fn and out and out[-1]["kernel"] == f"{src.name}:{fn}":
                    out[-1]["regs"] = int(r.group(1))
    return out


def failures(records: list[dict]) -> list[str]:
    bad = []
    for r in records:
        where = f"{r['kernel']} {r['arch']} {r.get('dtype', '')} {r.get('config', '')}"
        if not r["compiled"]:
            bad.append(f"compile failure: {where}: {r.get('error')}")
        elif (r.get("hot") or r.get("strict")) and (r.get("spill_bytes") or r.get("stack_bytes")):
            kind = "hot" if r.get("hot") else "soft kernel"
            bad.append(f"{kind} configuration spills ({r['spill_bytes']} B) or uses a stack ({r['stack_bytes']} B): "
                       f"{where}")
        elif "smem_estimate" in r and r["smem_bytes"] > r["smem_estimate"]:
            bad.append(f"shared memory {r['smem_bytes']} B above the pruning estimate {r['smem_estimate']} B: {where}")
        elif "smem_bytes" in r and r["smem_bytes"] > SMEM_LIMIT[int(r["arch"][3:])]:
            bad.append(f"shared memory {r['smem_bytes']} B over the {r['arch']} limit: {where}")
    return bad


def markdown(records: list[dict], seconds: float) -> str:
    lines = ["# GPU kernels compiled without a GPU (`make gpu-static`)", "",
             f"{len(records)} compilations in {seconds:.0f} s (benchmarks/gpu_static.py). Registers / stack / spills "
             "from ptxas; shared memory from Triton. *Hot*: the configurations the GPU benchmarks' shapes use.", "",
             "| kernel | arch | compiled | configs | hot | max regs | max stack B (hot) | spill B (hot) | "
             "max spill B (all) | max smem B |", "|---|---|---|---|---|---|---|---|---|---|"]
    groups: dict[tuple, list] = {}
    for r in records:
        groups.setdefault((r["kernel"], r["arch"]), []).append(r)
    for (k, a), rs in sorted(groups.items()):
        ok = [r for r in rs if r["compiled"]]
        hot = [r for r in ok if r.get("hot")]

        def mx(key, rows):
            vals = [r.get(key) or 0 for r in rows]
            return max(vals) if vals else "-"

        lines.append(f"| {k} | {a} | {len(ok)}/{len(rs)} | {len(rs)} | {len(hot)} | {mx('regs', ok)} | "
                     f"{mx('stack_bytes', hot)} | {mx('spill_bytes', hot)} | {mx('spill_bytes', ok)} | "
                     f"{mx('smem_bytes', ok)} |")
    return "\n".join(lines) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--arch", default="80,90,100")
    ap.add_argument("--quick", action="store_true", help="a sample of the configurations (development)")
    ap.add_argument("--out", type=Path, default=RESULTS / "gpu_static.json")
    args = ap.parse_args()
    t0 = time.time()
    archs = archs_supported([int(a) for a in args.arch.split(",")])
    work = [(j, a) for a in archs for j in jobs(args.quick) if a in FULL_ARCHS or j["hot"]]
    print(f"compiling {len(work)} kernel configurations for {', '.join(f'sm_{a}' for a in archs)} "
          f"with {args.jobs} processes", flush=True)
    records = []
    with ProcessPoolExecutor(args.jobs) as pool:
        for i, r in enumerate(pool.map(_run, work, chunksize=4), 1):
            records.append(r)
            if i % 100 == 0 or i == len(work):
                print(f"  {i}/{len(work)} ({time.time() - t0:.0f} s)", flush=True)
    records += nvcc_report()
    seconds = time.time() - t0
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(records, indent=0) + "\n")
    md = markdown(records, seconds)
    args.out.with_suffix(".md").write_text(md)
    print(md)
    bad = failures(records)
    for b in bad[:40]:
        print("FAIL", b)
    if bad:
        print(f"{len(bad)} failures (of {len(records)} records)")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
