"""The demo: PQ on the bundled digits with sqret's ops beside FAISS IndexPQ at the same M and bits."""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch

from . import ops
from .cluster import train_pq
from .data import load_digits_split
from .eval import mean_average_precision, recall_at_k

CONFIGS = ((8, 4), (16, 4), (8, 8))  # (M, nbits): 32, 64 and 64 bits per vector
MAP_AT = 100
DIGITS_EPOCHS = 30  # the deep methods' budget on the digits: the demo's table, and sqret train's defaults there


def digits_lr(method: str) -> float | None:
    """The learning rate of the short digits runs (None: the method's own)."""
    return 1e-3 if method in ("spq", "sscq", "mopq") else None  # the papers' lr is for long runs


@dataclass
class Row:
    system: str
    M: int
    nbits: int
    recall10: float  # 10-recall@10 against exact l2 search
    map100: float  # mAP@100 against labels
    train_s: float  # train + encode the database
    search_s: float


def _sqret_pq(db, queries, M, nbits, seed):
    t0 = time.perf_counter()
    C = train_pq(db, M, 1 << nbits, iters=25, seed=seed, progress=False)
    codes = ops.encode(db, C)
    if nbits == 4:
        codes = ops.pack4(codes)
    t1 = time.perf_counter()
    _, ranked = ops.adc_topk(ops.build_lut(queries, C), codes, db.shape[0], packed=nbits == 4)
    return ranked, t1 - t0, time.perf_counter() - t1


def _faiss_pq(db, queries, M, nbits, seed):
    import faiss

    t0 = time.perf_counter()
    index = faiss.IndexPQ(db.shape[1], M, nbits)
    index.pq.cp.seed = seed
    index.pq.cp.min_points_per_centroid = 1  # small data on purpose: no warning
    index.train(db.numpy())
    index.add(db.numpy())
    t1 = time.perf_counter()
    _, ranked = index.search(queries.numpy(), db.shape[0])
    return torch.from_numpy(ranked.astype(np.int64)), t1 - t0, time.perf_counter() - t1


def run(seed: int = 0) -> list[Row]:
    """Train, encode and search each config with both systems; return the table rows."""
    split = load_digits_split(seed=seed)
    db, q = split.database, split.queries
    exact = torch.cdist(q, db).topk(db.shape[0], largest=False).indices
    exact_map = mean_average_precision(split.query_labels, split.database_labels, exact, MAP_AT)
    rows = [Row("exact l2 (float32)", 0, 32, 1.0, exact_map, 0.0, 0.0)]
    _sqret_pq(db[:64], q[:2], 2, 4, seed)  # warm-up: first-call costs are not the method's
    for M, nbits in CONFIGS:
        for name, fn in (("sqret PQ", _sqret_pq), ("faiss IndexPQ", _faiss_pq)):
            ranked, t_train, t_search = fn(db, q, M, nbits, seed)
            rows.append(
                Row(
                    name,
                    M,
                    nbits,
                    recall_at_k(ranked, exact, 10),
                    mean_average_precision(split.query_labels, split.database_labels, ranked, MAP_AT),
                    t_train,
                    t_search,
                )
            )
    return rows


def format_table(rows: list[Row]) -> str:
    head = "| system | M | bits/sub | code bits | 10-recall@10 | mAP@100 | train+encode s | search s |"
    lines = [head, "|" + "---|" * 8]
    for r in rows:
        code_bits = "float" if r.M == 0 else str(r.M * r.nbits)
        lines.append(
            f"| {r.system} | {r.M or '-'} | {r.nbits if r.M else '-'} | {code_bits} | {r.recall10:.3f} "
            f"| {r.map100:.3f} | {r.train_s:.2f} | {r.search_s:.3f} |"
        )
    return "\n".join(lines)


def deep_rows(seed: int = 0, epochs: int = DIGITS_EPOCHS, methods=("spq", "sscq", "mecoq", "dpq")) -> list[str]:
    """Each method (32 bits) trained on the digits database for a short budget (same split as the table)."""
    import torch

    from .data import load_digits_images
    from .methods import build_method
    from .train import TrainConfig, train

    data = load_digits_images(val_per_class=0, seed=seed)  # the queries and database of load_digits_split
    rows = []
    for name in methods:
        torch.manual_seed(seed)
        t0 = time.perf_counter()
        method = build_method(name, 32, "small", 1, 8, data.num_classes)
        result = train(method, data, TrainConfig(epochs=epochs, lr=digits_lr(name), seed=seed, progress=False,
                                                 map_at=MAP_AT))
        kind = "supervised" if method.supervised else "self-supervised"
        rows.append(f"| {name.upper()} (sqret, {kind}, {epochs} epochs) | 32 | {result[f'mAP@{MAP_AT}']:.3f} | "
                    f"{time.perf_counter() - t0:.0f} |")
    return rows


def main(seed: int = 0) -> int:
    split = load_digits_split(seed=seed)
    print(
        f"sqret demo: product quantization on scikit-learn digits ({split.database.shape[0]} database, "
        f"{split.queries.shape[0]} queries, 64-d), backends: "
        + ", ".join(b.name for b in ops.backends() if b.available)
    )
    rows = run(seed)
    print(format_table(rows))
    pixels = next(r for r in rows if r.system == "faiss IndexPQ" and r.M * r.nbits == 32)
    print("\nDeep quantization on the same split (mAP@100 against the labels):")
    print("| method | bits | mAP@100 | train s |\n|---|---|---|---|")
    print(f"| PQ on raw pixels (FAISS IndexPQ, M=8, 4 bits) | 32 | {pixels.map100:.3f} | {pixels.train_s:.0f} |")
    print("\n".join(deep_rows(seed)))
    return 0
