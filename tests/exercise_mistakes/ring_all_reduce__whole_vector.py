"""Right result, too many bytes: the whole vector goes around the ring p - 1 times."""
import numpy as np

EXPECT = ["whole array"]


def ring_all_reduce(comm, x):
    p, r = comm.size, comm.rank
    total, passing = x.copy(), x.copy()
    for s in range(p - 1):
        comm.send(passing, (r + 1) % p)
        passing = comm.recv((r - 1) % p)
        total = total + passing
    return total
