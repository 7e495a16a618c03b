"""Forgets padding: np.array_split gives chunks of unequal sizes."""
import numpy as np

EXPECT = ["padded with zeros", "elements"]


def reduce_scatter(comm, x):
    p, r = comm.size, comm.rank
    buf = [c.copy() for c in np.array_split(x.reshape(-1), p)]
    for s in range(p - 1):
        comm.send(buf[(r - s - 1) % p], (r + 1) % p)
        buf[(r - s - 2) % p] = buf[(r - s - 2) % p] + comm.recv((r - 1) % p)
    return buf[r]
