"""A right solution written another way: owned_range from divmod, gradient_shard that pads the
flat gradient itself, reduce-scatters, and multiplies by 1 / world size. Must pass."""
import numpy as np

from minidist import distributed as dist

EXPECT = []


def owned_range(numel, world_size, rank):
    c, rest = divmod(numel, world_size)
    c += 1 if rest else 0
    start = rank * c
    return start, start + c


def gradient_shard(comm, flat_grad):
    n, p = flat_grad.size, comm.size
    c = -(-n // p)
    padded = np.zeros(p * c, dtype=flat_grad.dtype)
    padded[:n] = flat_grad
    return dist.reduce_scatter(comm, padded) * (1.0 / p)
