"""Wrong: owned_range returns an inclusive stop, one short of Python's slice convention."""
from minidist import distributed as dist

EXPECT = ["stop is EXCLUSIVE"]


def owned_range(numel, world_size, rank):
    c = -(-numel // world_size)
    return rank * c, (rank + 1) * c - 1


def gradient_shard(comm, flat_grad):
    return dist.reduce_scatter(comm, flat_grad) / comm.size
