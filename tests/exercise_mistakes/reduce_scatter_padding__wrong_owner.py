"""All-reduce's schedule: rank r ends with chunk r + 1 instead of chunk r."""
import numpy as np

EXPECT = ["returned the summed chunk", "must end with chunk r"]


def reduce_scatter(comm, x):
    p, r = comm.size, comm.rank
    flat = x.reshape(-1)
    c = -(-flat.size // p)
    buf = np.zeros((p, c))
    buf.reshape(-1)[:flat.size] = flat
    for s in range(p - 1):
        comm.send(buf[(r - s) % p], (r + 1) % p)
        buf[(r - s - 1) % p] += comm.recv((r - 1) % p)
    return buf[(r + 1) % p].copy()
