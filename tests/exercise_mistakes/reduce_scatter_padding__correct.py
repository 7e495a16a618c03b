"""A correct student solution: must pass."""
import numpy as np

EXPECT = []


def reduce_scatter(comm, x):
    p, r = comm.size, comm.rank
    flat = x.reshape(-1)
    c = -(-flat.size // p)
    buf = np.zeros((p, c))
    buf.reshape(-1)[:flat.size] = flat
    for s in range(p - 1):
        comm.send(buf[(r - s - 1) % p], (r + 1) % p)
        buf[(r - s - 2) % p] += comm.recv((r - 1) % p)
    return buf[r].copy()
