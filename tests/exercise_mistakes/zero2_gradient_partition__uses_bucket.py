"""Wrong: asks ZeRO's own Bucket for the range: the rules refuse minidist.parallel."""
import numpy as np

from minidist import distributed as dist
from minidist.parallel.data.buckets import make_buckets

EXPECT = ["imports `minidist.parallel`"]


def owned_range(numel, world_size, rank):
    return make_buckets([np.zeros(numel)], numel, world_size)[0].shard_range(rank)


def gradient_shard(comm, flat_grad):
    return dist.reduce_scatter(comm, flat_grad, op="mean")
