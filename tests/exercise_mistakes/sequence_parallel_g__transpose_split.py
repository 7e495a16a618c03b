"""A right solution written another way: x.transpose(1, 0, 2) and .reshape(-1) for the flat
order, np.split of the gathered vector into the ranks' blocks and np.concatenate along axis 1,
the reduce-scatter's chunk reshaped with -1. Must pass."""
import numpy as np

from minidist import distributed as dist

EXPECT = []


def g_forward(comm, x):
    B, s, C = x.shape
    flat = dist.all_gather(comm, x.transpose(1, 0, 2).reshape(-1))
    blocks = [b.reshape(s, B, C).transpose(1, 0, 2) for b in np.split(flat, comm.size)]
    return np.concatenate(blocks, axis=1)


def g_backward(comm, grad):
    B, T, C = grad.shape
    mine = dist.reduce_scatter(comm, grad.transpose(1, 0, 2).reshape(-1))
    return mine.reshape(-1, B, C).transpose(1, 0, 2).copy()


def gbar_forward(comm, x):
    return g_backward(comm, x)


def gbar_backward(comm, grad):
    return g_forward(comm, grad)
