"""A right solution written another way: one dist.all_reduce with another algorithm (a tree)
where the sum is needed, and copies where f's forward and g's backward are the identity. The
statement never asks for a ring: it must pass."""
from minidist import distributed as dist

EXPECT = []


def f_forward(comm, x):
    return x.copy()


def f_backward(comm, grad):
    return dist.all_reduce(comm, grad, algorithm="tree")


def g_forward(comm, x):
    return dist.all_reduce(comm, x, algorithm="recursive_doubling")


def g_backward(comm, grad):
    return grad.copy()
