"""ResidualIndex: search over residual-quantizer codes (DPQ), any prefix of the levels.

Residual codewords span the whole space, so the distance to a code is not a sum of per-level table entries
(cross terms); the search decodes the codes chunk by chunk and takes exact query-to-reconstruction
distances with one GEMM per chunk, keeping a running top-k (memory O(Q * (chunk + k))).
"""

from __future__ import annotations

import threading

import torch

from .. import ops
from .base import as_matrix, new_ids

_CHUNK = 1 << 16


class ResidualIndex:
    """Codes [n, levels] of a trained ``sqret.nn.ResidualQuantizer``, searched by asymmetric (default) or
    symmetric squared-l2 distance. ``levels`` < the quantizer's uses the prefix codes (shorter codes)."""

    def __init__(self, codebooks: torch.Tensor, levels: int | None = None):
        L = codebooks.shape[0]
        self.levels = L if levels is None else levels
        if codebooks.dim() != 3 or not 1 <= self.levels <= L:
            raise ValueError(f"codebooks must be [levels, K, d] and 1 <= levels <= {L}")
        self.codebooks = codebooks.detach().float()[: self.levels]
        self.d = codebooks.shape[2]
        self.K = codebooks.shape[1]
        # (codes [n, levels], ids [n]) published together: a search reads one pair (see sqret.index.base)
        self._state = (torch.empty(0, self.levels, dtype=ops.code_dtype(self.K)), torch.empty(0, dtype=torch.int64))
        self._lock = threading.Lock()

    @classmethod
    def from_quantizer(cls, quantizer, levels: int | None = None) -> ResidualIndex:
        return cls(quantizer.codebooks, levels)

    def __len__(self) -> int:
        return int(self._state[1].shape[0])

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return ops.residual_encode(as_matrix(x, self.d, "x"), self.codebooks)

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        return ops.residual_decode(codes, self.codebooks)

    def add(self, x, ids=None) -> None:
        self.add_codes(self.encode(x), ids)

    def add_codes(self, codes, ids=None) -> None:
        """Append codes [n, >= levels] (extra levels are dropped: a prefix is a shorter code)."""
        codes = torch.as_tensor(codes)
        if codes.dim() != 2 or codes.shape[1] < self.levels:
            raise ValueError(f"codes must be [n, >= {self.levels}], got shape {tuple(codes.shape)}")
        codes = codes[:, : self.levels]
        ops.checks.code_range(codes, self.K, False)
        with self._lock:
            old_codes, old_ids = self._state
            new = new_ids(ids, codes.shape[0], len(old_ids))
            self._state = (torch.cat([old_codes, codes.to(old_codes.dtype)]), torch.cat([old_ids, new]))

    def search(self, queries, k: int, *, symmetric: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """(squared distances [Q, k], ids [Q, k]), nearest first; -1 / +inf past ntotal."""
        all_codes, all_ids = self._state
        q = as_matrix(queries, self.d, "queries")
        k = ops.checks.topk_k(k)
        if symmetric:
            q = self.decode(self.encode(q))
        Q = q.shape[0]
        best_d = torch.full((Q, 0), float("inf"))
        best_i = torch.empty((Q, 0), dtype=torch.int64)
        qn = (q * q).sum(1, keepdim=True)
        for a in range(0, len(all_ids), _CHUNK):
            x = self.decode(all_codes[a : a + _CHUNK])
            dist = (qn - 2 * q @ x.T + (x * x).sum(1)).clamp_min_(0)
            d = torch.cat([best_d, dist], 1)
            i = torch.cat([best_i, all_ids[a : a + _CHUNK].expand(Q, -1)], 1)
            best_d, pos = d.topk(min(k, d.shape[1]), dim=1, largest=False, sorted=True)
            best_i = i.gather(1, pos)
        pad = k - best_d.shape[1]
        if pad > 0:
            best_d = torch.cat([best_d, torch.full((Q, pad), float("inf"))], 1)
            best_i = torch.cat([best_i, torch.full((Q, pad), -1, dtype=torch.int64)], 1)
        return best_d, best_i
