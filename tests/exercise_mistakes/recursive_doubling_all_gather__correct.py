"""A correct student solution: must pass."""
import numpy as np

EXPECT = []


def all_gather(comm, chunk):
    p, r, c = comm.size, comm.rank, chunk.size
    buf = np.zeros((p, c))
    buf[r] = chunk
    k = 0
    while (1 << k) < p:
        d = 1 << k
        partner = r ^ d
        mine, theirs = (r >> k) << k, (partner >> k) << k
        comm.send(buf[mine:mine + d], partner)
        buf[theirs:theirs + d] = comm.recv(partner).reshape(d, c)
        k += 1
    return buf.reshape(-1)
