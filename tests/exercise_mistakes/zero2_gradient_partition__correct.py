"""A correct student solution: must pass."""
from minidist import distributed as dist

EXPECT = []


def owned_range(numel, world_size, rank):
    c = -(-numel // world_size)
    return rank * c, (rank + 1) * c


def gradient_shard(comm, flat_grad):
    return dist.reduce_scatter(comm, flat_grad) / comm.size
