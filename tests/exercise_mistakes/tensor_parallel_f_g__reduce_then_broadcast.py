"""Wrong: g's forward sums with a reduce to rank 0 and a broadcast: the right numbers, but two
collectives where the statement asks for one all-reduce."""
from minidist import distributed as dist

EXPECT = ["called reduce, broadcast", "exactly one dist.all_reduce"]


def f_forward(comm, x):
    return x


def f_backward(comm, grad):
    return dist.all_reduce(comm, grad)


def g_forward(comm, x):
    total = dist.reduce(comm, x, root=0)
    return dist.broadcast(comm, total if comm.rank == 0 else x, root=0)


def g_backward(comm, grad):
    return grad
