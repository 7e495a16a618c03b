"""A correct student solution: must pass."""
from minidist import distributed as dist

EXPECT = []


def f_forward(comm, x):
    return x


def f_backward(comm, grad):
    return dist.all_reduce(comm, grad)


def g_forward(comm, x):
    return dist.all_reduce(comm, x)


def g_backward(comm, grad):
    return grad
