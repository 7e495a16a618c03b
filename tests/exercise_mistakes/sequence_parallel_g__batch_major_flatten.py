"""Wrong: flattens (B, T, C) as it is, batch axis outermost, so the flat collectives cut and
join along the batch: positions land in the wrong rows."""
from minidist import distributed as dist

EXPECT = ["all there but in the wrong places", "move the sequence axis first before you flatten"]


def g_forward(comm, x):
    B, s, C = x.shape
    return dist.all_gather(comm, x.copy()).reshape(B, s * comm.size, C)


def g_backward(comm, grad):
    B, T, C = grad.shape
    return dist.reduce_scatter(comm, grad.copy()).reshape(B, T // comm.size, C)


def gbar_forward(comm, x):
    return g_backward(comm, x)


def gbar_backward(comm, grad):
    return g_forward(comm, grad)
