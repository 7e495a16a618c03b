"""Sends only its own chunk every step: blocks stay empty."""
import numpy as np

EXPECT = ["still zero", "ALL"]


def all_gather(comm, chunk):
    p, r, c = comm.size, comm.rank, chunk.size
    buf = np.zeros((p, c))
    buf[r] = chunk
    k = 0
    while (1 << k) < p:
        partner = r ^ (1 << k)
        comm.send(chunk, partner)
        buf[partner] = comm.recv(partner)
        k += 1
    return buf.reshape(-1)
