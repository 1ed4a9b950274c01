"""Differentiable cross-device sampling (MoPQ's DCS): the embeddings of every rank serve as negatives for the
queries of every rank, and the gradients of the gathered copies flow back to the rank that owns each row.

With a loss that averages over the local anchors only (each rank scores its own queries against the global
batch) and the trainer's gradient average over ranks, the update equals that of one process computing the
loss of the whole global batch: ``all_gather``'s backward sums every rank's gradient of a row onto its owner.
Without ``torch.distributed`` (or with one rank) everything here is the identity.
"""

from __future__ import annotations

import os
import sys

import torch
import torch.distributed as dist


def world() -> tuple[int, int]:
    """(rank, world size); (0, 1) without an initialized process group."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def leave(code: int = 0) -> None:
    """End this rank: a barrier (no rank tears the group down while another still uses it), the process group
    destroyed, stdout and stderr flushed, then ``os._exit(code)``. Under load, torch's gloo teardown aborts a
    finished rank in C++ static destructors after Python's ``main`` has returned ('terminate called without an
    active exception', SIGABRT) in a fraction of runs; leaving with ``os._exit`` skips them. Call it last: no
    ``atexit`` handler runs after it."""
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def gather(x: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Rows of every rank, rank order -> ([world * B, ...], this rank's first row); differentiable for floating
    tensors, exact for integer ones (labels). Every rank must pass the same shape (the trainer's equal local
    batches)."""
    rank, size = world()
    if size == 1:
        return x, 0
    x = x.contiguous()
    if x.is_floating_point():
        from torch.distributed.nn.functional import all_gather

        parts = all_gather(x)
    else:
        parts = [torch.empty_like(x) for _ in range(size)]
        dist.all_gather(parts, x)
    return torch.cat(parts), rank * x.shape[0]


def pair_rows(a: torch.Tensor, b: torch.Tensor, cross_device: bool):
    """Two views a, b [B, d] as the rows of one matrix [2N, d] (N = B, or B summed over the ranks when
    ``cross_device``): view a's rows first, then view b's. Returns (rows, anchors, positives): the rows, the
    row numbers of this rank's 2B anchors, and each anchor's positive (its twin in the other view)."""
    B = a.shape[0]
    if cross_device:
        a, first = gather(a)
        b, _ = gather(b)
    else:
        first = 0
    N = a.shape[0]
    local = torch.arange(first, first + B, device=a.device)
    anchors = torch.cat([local, local + N])
    positives = torch.cat([local + N, local])
    return torch.cat([a, b]), anchors, positives
