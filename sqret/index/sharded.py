"""Search over torch.distributed: shards (each rank holds part of the database) and replicas (each rank
holds all of it and takes part of the queries). Launch with torchrun; works on gloo (CPU) and nccl."""

from __future__ import annotations

import torch
import torch.distributed as dist

from .. import ops


def merge_topk(values: torch.Tensor, ids: torch.Tensor, k: int, largest: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """values / ids [Q, R] -> the best k per row, stable: on equal values the earlier column wins."""
    order = torch.sort(values, dim=1, stable=True, descending=largest).indices[:, :k]
    return values.gather(1, order), ids.gather(1, order)


class ShardedIndex:
    """Every rank holds a shard (a PQIndex or IVFPQIndex whose ids are global); ``search`` scans the local
    shard, all-gathers every rank's top-k and merges them: all ranks return the same [Q, k]. With shards
    that split the database in id order, results equal one index holding everything (ties by rank)."""

    def __init__(self, local, group=None):
        if not dist.is_available() or not dist.is_initialized():
            raise RuntimeError("ShardedIndex needs torch.distributed initialized (run under torchrun)")
        self.local, self.group = local, group

    def __len__(self) -> int:
        n = torch.tensor([len(self.local)], dtype=torch.int64)
        dist.all_reduce(n, group=self.group)
        return int(n)

    def search(self, queries, k: int, **kwargs) -> tuple[torch.Tensor, torch.Tensor]:
        k = ops.checks.topk_k(k)
        values, ids = self.local.search(queries, k, **kwargs)
        world = dist.get_world_size(self.group)
        all_v = [torch.empty_like(values) for _ in range(world)]
        all_i = [torch.empty_like(ids) for _ in range(world)]
        dist.all_gather(all_v, values.contiguous(), group=self.group)
        dist.all_gather(all_i, ids.contiguous(), group=self.group)
        return merge_topk(torch.cat(all_v, 1), torch.cat(all_i, 1), k, self.local.metric == "ip")


def search_replicated(index, queries, k: int, group=None, **kwargs) -> tuple[torch.Tensor, torch.Tensor]:
    """Replicas: every rank holds the whole index and searches its slice of the queries; every rank gets
    all [Q, k] results back."""
    if not dist.is_available() or not dist.is_initialized():
        raise RuntimeError("search_replicated needs torch.distributed initialized (run under torchrun)")
    queries = torch.as_tensor(queries)
    world, rank = dist.get_world_size(group), dist.get_rank(group)
    Q = queries.shape[0]
    per = -(-Q // world)  # ceil
    mine = queries[rank * per : (rank + 1) * per]
    values, ids = index.search(mine, k, **kwargs)
    pad = per - values.shape[0]
    values = torch.cat([values, values.new_zeros((pad, values.shape[1]))])
    ids = torch.cat([ids, ids.new_zeros((pad, ids.shape[1]))])
    all_v = [torch.empty_like(values) for _ in range(world)]
    all_i = [torch.empty_like(ids) for _ in range(world)]
    dist.all_gather(all_v, values, group=group)
    dist.all_gather(all_i, ids, group=group)
    return torch.cat(all_v)[:Q], torch.cat(all_i)[:Q]
