"""A right solution written another way: the flat collectives used on (B, ·, C) as they come,
the rank blocks put in place with a reshape to (t, B, T/t, C) and a transpose. Must pass."""
from minidist import distributed as dist

EXPECT = []


def g_forward(comm, x):
    B, s, C = x.shape
    t = comm.size
    return dist.all_gather(comm, x).reshape(t, B, s, C).transpose(1, 0, 2, 3).reshape(B, t * s, C)


def g_backward(comm, grad):
    B, T, C = grad.shape
    t = comm.size
    s = T // t
    blocks = grad.reshape(B, t, s, C).transpose(1, 0, 2, 3)
    return dist.reduce_scatter(comm, blocks).reshape(B, s, C)


def gbar_forward(comm, x):
    return g_backward(comm, x)


def gbar_backward(comm, grad):
    return g_forward(comm, grad)
