"""Run under torchrun (gloo): shard an index by id range over the ranks, search sharded and replicated."""

import sys

import torch
import torch.distributed as dist

from sqret.crossdevice import leave
from sqret.index import IVFPQIndex, PQIndex, load
from sqret.index.sharded import ShardedIndex, search_replicated


def shard_of(full, rank: int, world: int):
    """The entries of `full` whose ids fall in this rank's contiguous range."""
    n = len(full)
    lo, hi = rank * n // world, (rank + 1) * n // world
    if isinstance(full, PQIndex):
        local = PQIndex.from_codebooks(full.codebooks, full.metric)
        ids = full.ids()
        keep = (ids >= lo) & (ids < hi)
        local.add_codes(full.codes()[keep], ids[keep])
        return local
    local = IVFPQIndex(full.d, full.nlist, full.M, full.nbits, full.metric)
    local.set_quantizers(full.centroids, full.codebooks)
    for li in range(full.nlist):
        ids = full.list_ids(li)
        keep = (ids >= lo) & (ids < hi)
        local.add_preassigned(torch.full((int(keep.sum()),), li), full.list_codes(li)[keep], ids[keep])
    return local


def main(index_path: str, queries_path: str, out_path: str, nprobe: int) -> None:
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    full = load(index_path)
    queries = torch.load(queries_path)
    kw = {"nprobe": nprobe} if isinstance(full, IVFPQIndex) else {}
    sharded = ShardedIndex(shard_of(full, rank, world))
    assert len(sharded) == len(full)
    D, I = sharded.search(queries, 10, **kw)
    Dr, Ir = search_replicated(full, queries, 10, **kw)
    if rank == 0:
        torch.save({"sharded": (D, I), "replicated": (Dr, Ir), "world": world}, out_path)
    leave()  # barrier, teardown, os._exit: see sqret.crossdevice.leave


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]))
