"""Right result, wrong algorithm: everyone sends to rank 0, which sends the sum back."""
import numpy as np

EXPECT = ["gather-to-root"]


def ring_all_reduce(comm, x):
    if comm.rank == 0:
        total = x.copy()
        for src in range(1, comm.size):
            total = total + comm.recv(src)
        for dst in range(1, comm.size):
            comm.send(total, dst)
        return total
    comm.send(x, 0)
    return comm.recv(0)
