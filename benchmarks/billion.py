"""Build a billion-code IVF-PQ index on disk and search it memory-mapped, with bounded memory.

    python benchmarks/billion.py [--n 1000000000] [--nlist 65536] [--path /tmp/billion.sqret] [--keep]

Synthetic data (8 bytes per code: d = 64, M = 8, nbits = 8): random centroids and residual codebooks, codes
written list by list in chunks through sqret.index.storage.IndexWriter (a progress bar, one chunk in memory
at a time), ids = positions. Then the index is opened with mmap=True (no checksum pass) and queried one at a
time at several nprobe. Records build time, disk size, open time, latency percentiles and the peak memory
(VmHWM counts file pages the search touched; RssAnon peak is the private memory) under benchmarks/results/.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

import sqret
from sqret.index import load
from sqret.index.storage import IndexWriter

D, M, NBITS = 64, 8, 8
RESULTS = Path(__file__).parent / "results"


def _status(key: str) -> float:
    for line in open("/proc/self/status"):
        if line.startswith(key):
            return int(line.split()[1]) / 1024
    return float("nan")


PEAK_ANON = [0.0]


def _sample() -> None:
    """Track the largest private (anonymous) memory seen: /proc has no peak for it."""
    PEAK_ANON[0] = max(PEAK_ANON[0], _status("RssAnon"))


def build(path: Path, n: int, nlist: int, chunk: int, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    centroids = rng.standard_normal((nlist, D)).astype(np.float32) * 4
    codebooks = rng.standard_normal((M, 1 << NBITS, D // M)).astype(np.float32)
    sizes = rng.multinomial(n, np.full(nlist, 1.0 / nlist))
    offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
    meta = {"kind": "ivfpq", "d": D, "nlist": nlist, "M": M, "nbits": NBITS, "metric": "l2", "ntotal": n}
    t0 = time.perf_counter()
    with IndexWriter(path, meta) as w:
        w.add("centroids", centroids)
        w.add("codebooks", codebooks)
        w.add("list_offsets", offsets)
        w.begin("codes", np.uint8, (M,))
        for a in tqdm(range(0, n, chunk), desc="codes", unit="chunk"):
            w.extend("codes", rng.integers(0, 1 << NBITS, (min(chunk, n - a), M), dtype=np.uint8))
            _sample()
        w.begin("ids", np.int64)
        for a in tqdm(range(0, n, chunk), desc="ids", unit="chunk"):
            w.extend("ids", np.arange(a, min(a + chunk, n), dtype=np.int64))
            _sample()
    return {"build_s": time.perf_counter() - t0, "disk_bytes": path.stat().st_size,
            "list_size_mean": float(sizes.mean()), "list_size_max": int(sizes.max())}


def search(path: Path, nprobes: list[int], queries: int, k: int, seed: int) -> dict:
    """Per nprobe, fresh queries: a cold pass (page cache dropped first, where allowed), then a warm pass."""
    t0 = time.perf_counter()
    index = load(path, mmap=True, verify=False)
    opened = time.perf_counter() - t0
    rng = np.random.default_rng(seed + 1)
    index.search(index.centroids[:1], k, nprobe=1)  # first call: list addresses
    out = {"open_s": opened, "cache": _drop_caches(), "nprobe": {}}
    for nprobe in nprobes:
        pick = rng.integers(0, index.nlist, queries)
        q = index.centroids[pick] + torch.from_numpy(rng.standard_normal((queries, D)).astype(np.float32))
        _drop_caches()
        row = {"codes_per_query": nprobe * index.ntotal / index.nlist}
        for phase in ("cold", "warm"):
            lat = []
            for i in range(queries):
                t = time.perf_counter()
                index.search(q[i : i + 1], k, nprobe=nprobe)
                lat.append(time.perf_counter() - t)
            _sample()
            lat_ms = np.array(lat) * 1e3
            row[f"{phase}_p50_ms"] = float(np.percentile(lat_ms, 50))
            row[f"{phase}_p99_ms"] = float(np.percentile(lat_ms, 99))
        batch = []
        for _ in range(3):
            t = time.perf_counter()
            index.search(q, k, nprobe=nprobe)
            batch.append(time.perf_counter() - t)
        row["warm_batch_qps"] = queries / min(batch)
        out["nprobe"][nprobe] = row
        print(f"nprobe {nprobe}: " + ", ".join(f"{key} {v:.2f}" for key, v in row.items()))
    return out


def markdown(r: dict) -> str:
    lines = [
        f"# IVF-PQ at {r['n']:,} codes on disk, searched memory-mapped",
        "",
        f"Machine: {r['machine']}; torch {r['torch']}, sqret {r['sqret']}; threads {r['threads']}.",
        f"Index: d={D}, M={M}, nbits={NBITS} ({M} bytes per code), nlist={r['nlist']:,}, l2; synthetic data.",
        "",
        f"- build (write codes + ids with checksums, atomic rename): {r['build_s']:.0f} s",
        f"- disk size: {r['disk_bytes'] / 2**30:.1f} GiB",
        f"- open with mmap=True, verify=False: {r['search']['open_s']:.2f} s",
        f"- peak memory: VmHWM {r['peak_hwm_mb']:.0f} MB (includes touched file pages), "
        f"private (largest RssAnon sampled) {r['peak_anon_mb']:.0f} MB",
        "",
        f"Latency, one query at a time, k={r['k']}, {r['queries']} fresh queries per nprobe: cold = page cache "
        f"{r['search']['cache']}, then warm = the same queries again; batch = all {r['queries']} in one call.",
        "",
        "| nprobe | codes scanned per query | cold p50 ms | cold p99 ms | warm p50 ms | warm p99 ms | warm batch QPS |",
        "|---|---|---|---|---|---|---|",
    ]
    for nprobe, s in r["search"]["nprobe"].items():
        lines.append(f"| {nprobe} | {s['codes_per_query']:,.0f} | {s['cold_p50_ms']:.2f} | {s['cold_p99_ms']:.2f} | "
                     f"{s['warm_p50_ms']:.2f} | {s['warm_p99_ms']:.2f} | {s['warm_batch_qps']:.0f} |")
    return "\n".join(lines) + "\n"


def _drop_caches() -> str:
    try:
        os.sync()
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
        return "dropped before each cold pass"
    except OSError:
        return "as left by the build (could not drop caches)"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=1_000_000_000)
    p.add_argument("--nlist", type=int, default=65536)
    p.add_argument("--path", type=Path, default=Path("/tmp/billion.sqret"))
    p.add_argument("--chunk", type=int, default=1 << 24)
    p.add_argument("--queries", type=int, default=100)
    p.add_argument("-k", type=int, default=10)
    p.add_argument("--nprobe", type=int, nargs="+", default=[1, 8, 32, 128])
    p.add_argument("--keep", action="store_true", help="keep the index file")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--name", default="billion")
    args = p.parse_args()
    r = {"n": args.n, "nlist": args.nlist, "k": args.k, "queries": args.queries, "threads": torch.get_num_threads(),
         "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
                    f"{os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 2**30:.0f} GiB RAM",
         "torch": torch.__version__, "sqret": sqret.__version__}
    try:
        r.update(build(args.path, args.n, args.nlist, args.chunk, args.seed))
        r["search"] = search(args.path, args.nprobe, args.queries, args.k, args.seed)
        _sample()
        r["peak_hwm_mb"], r["peak_anon_mb"] = _status("VmHWM"), PEAK_ANON[0]
    finally:
        if not args.keep:
            args.path.unlink(missing_ok=True)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{args.name}.json").write_text(json.dumps(r, indent=1))
    (RESULTS / f"{args.name}.md").write_text(markdown(r))
    print(markdown(r))


if __name__ == "__main__":
    main()
