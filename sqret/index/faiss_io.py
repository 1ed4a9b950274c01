"""FAISS interop: IndexPQ, IndexPQFastScan, IndexIVFPQ and IndexIVFPQFastScan (by residual or not; optionally
in IndexIDMap / IndexIDMap2) to and from sqret.

Codebooks, coarse centroids, codes and ids are copied as they are, so both libraries search the same codes.
4-bit codes use the same packing in both (sub-space 2j in the low nibble of byte j); FAISS's fast-scan
lists (blocks of 32 codes in its own layout) are read and written through its CodePacker / sa codes.
"""

from __future__ import annotations

import numpy as np
import torch

from .. import ops
from .ivf import IVFPQIndex
from .pq import PQIndex


def _faiss():
    import faiss

    return faiss


def _metric_type(metric: str) -> int:
    f = _faiss()
    return f.METRIC_L2 if metric == "l2" else f.METRIC_INNER_PRODUCT


def _metric_name(metric_type: int) -> str:
    f = _faiss()
    if metric_type == f.METRIC_L2:
        return "l2"
    if metric_type == f.METRIC_INNER_PRODUCT:
        return "ip"
    raise ValueError(f"unsupported FAISS metric type {metric_type}")


def _faiss_codes(codes: torch.Tensor, nbits: int) -> np.ndarray:
    return np.ascontiguousarray((ops.pack4(codes) if nbits == 4 else codes).numpy())


def _sqret_codes(raw: np.ndarray, M: int, nbits: int) -> torch.Tensor:
    t = torch.from_numpy(np.array(raw))
    return ops.unpack4(t, M) if nbits == 4 else t


def _pq_centroids(pq) -> torch.Tensor:
    return torch.from_numpy(_faiss().vector_to_array(pq.centroids).reshape(pq.M, pq.ksub, pq.dsub).copy())


def to_faiss(index: PQIndex | IVFPQIndex):
    """A FAISS index holding the same codebooks, codes and ids: IndexPQ (IndexIDMap2 around it when the ids
    are not 0..ntotal-1), IndexIVFPQ, or IndexIVFPQFastScan for a fast-scan IVFPQIndex."""
    f = _faiss()
    if not index.is_trained:
        raise RuntimeError("the index is not trained")
    mt = _metric_type(index.metric)
    if isinstance(index, PQIndex):
        out = f.IndexPQ(index.d, index.M, index.nbits, mt)
        f.copy_array_to_vector(index.codebooks.numpy().ravel(), out.pq.centroids)
        out.is_trained = True
        ids = index.ids().numpy()
        codes = _faiss_codes(index.codes(), index.nbits)
        if np.array_equal(ids, np.arange(len(ids))):
            out.add_sa_codes(codes)
            return out
        wrapped = f.IndexIDMap2(out)
        out.this.disown()
        wrapped.own_fields = True
        wrapped.add_sa_codes(codes, np.ascontiguousarray(ids, dtype=np.int64))
        return wrapped
    if isinstance(index, IVFPQIndex):
        quantizer = f.IndexFlatL2(index.d) if index.metric == "l2" else f.IndexFlatIP(index.d)
        quantizer.add(index.centroids.numpy())
        lists = index.invlists  # one state of the index
        out = f.IndexIVFPQ(quantizer, index.d, index.nlist, index.M, index.nbits, mt)
        quantizer.this.disown()
        out.own_fields = True
        out.by_residual = index.by_residual
        f.copy_array_to_vector(index.codebooks.numpy().ravel(), out.pq.centroids)
        out.is_trained = True
        for li in range(index.nlist):
            ids = np.ascontiguousarray(np.asarray(lists.ids[li]), dtype=np.int64)
            if len(ids):
                codes = _faiss_codes(lists.list_codes(li), index.nbits)
                out.invlists.add_entries(li, len(ids), f.swig_ptr(ids), f.swig_ptr(codes))
        out.ntotal = lists.ntotal
        out.precompute_table()
        if not index.fast_scan:
            return out
        # FAISS's own conversion to its fast-scan layout (its add_sa_codes corrupts memory past a few
        # hundred codes in faiss-cpu 1.15); the fast-scan index shares the coarse quantizer: keep it alive
        fast = f.IndexIVFPQFastScan(out, 32)
        fast.referenced_objects = [out]
        return fast
    raise TypeError(f"to_faiss takes a PQIndex or IVFPQIndex, got {type(index).__name__}")


def _fastscan_list(findex, li: int) -> tuple[np.ndarray, np.ndarray]:
    """(packed 4-bit codes [n, ceil(M/2)], ids [n]) of list li of an IndexIVFPQFastScan."""
    f = _faiss()
    inv, packer = findex.invlists, findex.get_CodePacker()
    n = inv.list_size(li)
    bs = packer.block_size
    nblocks = (n + packer.nvec - 1) // packer.nvec
    blocks = f.rev_swig_ptr(inv.get_codes(li), nblocks * bs)
    flat = np.zeros((nblocks * packer.nvec, packer.code_size), np.uint8)
    for b in range(nblocks):
        packer.unpack_all(f.swig_ptr(blocks[b * bs:(b + 1) * bs]), f.swig_ptr(flat[b * packer.nvec:]))
    ids = f.rev_swig_ptr(inv.get_ids(li), n).astype(np.int64) if n else np.zeros(0, np.int64)
    return flat[:n], ids


def from_faiss(findex) -> PQIndex | IVFPQIndex:
    """A sqret index from a FAISS IndexPQ, IndexIVFPQ or IndexIVFPQFastScan, optionally in IndexIDMap(2)."""
    f = _faiss()
    findex = f.downcast_index(findex)
    ids = None
    if isinstance(findex, (f.IndexIDMap, f.IndexIDMap2)):
        ids = f.vector_to_array(findex.id_map).astype(np.int64)
        findex = f.downcast_index(findex.index)
    if isinstance(findex, f.IndexPQ):
        pq = findex.pq
        index = PQIndex.from_codebooks(_pq_centroids(pq), _metric_name(findex.metric_type))
        raw = f.vector_to_array(findex.codes).reshape(findex.ntotal, pq.code_size)
        index.add_codes(_sqret_codes(raw, pq.M, pq.nbits), ids)
        return index
    fast = isinstance(findex, f.IndexIVFPQFastScan)
    if fast or isinstance(findex, f.IndexIVFPQ):
        pq, inv = findex.pq, findex.invlists
        index = IVFPQIndex(findex.d, findex.nlist, pq.M, pq.nbits, _metric_name(findex.metric_type),
                           fast_scan=fast, by_residual=bool(findex.by_residual), exact=not fast)
        index.set_quantizers(torch.from_numpy(findex.quantizer.reconstruct_n(0, findex.nlist)), _pq_centroids(pq))
        lists, codes, ids = [], [], []
        for li in range(findex.nlist):
            n = inv.list_size(li)
            if not n:
                continue
            if fast:
                raw, lid = _fastscan_list(findex, li)
            else:
                raw = f.rev_swig_ptr(inv.get_codes(li), n * inv.code_size).reshape(n, inv.code_size)
                lid = f.rev_swig_ptr(inv.get_ids(li), n).astype(np.int64)
            codes.append(_sqret_codes(raw, pq.M, pq.nbits))
            ids.append(torch.from_numpy(np.array(lid)))
            lists.append(torch.full((n,), li, dtype=torch.int64))
        if lists:
            index.add_preassigned(torch.cat(lists), torch.cat(codes), torch.cat(ids))
        return index
    raise TypeError(f"from_faiss takes a FAISS IndexPQ, IndexIVFPQ or IndexIVFPQFastScan, got {type(findex).__name__}")
