"""Wrong: p - 2 steps instead of p - 1, the off-by-one in the step count: every chunk misses
one rank's data and each rank sends a message too few."""
import numpy as np

EXPECT = ["misses the data of rank"]


def reduce_scatter(comm, x):
    p, r, n = comm.size, comm.rank, x.size
    c = -(-n // p)
    buf = np.zeros((p, c), dtype=x.dtype)
    buf.reshape(-1)[:n] = x.reshape(-1)
    for s in range(p - 2):
        comm.send(buf[(r - s - 1) % p].copy(), (r + 1) % p)
        buf[(r - s - 2) % p] += comm.recv((r - 1) % p)
    return buf[r].copy()
