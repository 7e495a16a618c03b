"""A right solution written another way: one float64 (p, c) buffer (np.zeros without dtype)
for every input, plain send then recv. A float32 array comes back as float64, which loses
nothing, and goes round in 8-byte elements, still n/p of them per step. Must pass."""
import numpy as np

EXPECT = []


def ring_all_reduce(comm, x):
    p, r, n = comm.size, comm.rank, x.size
    c = -(-n // p)
    buf = np.zeros((p, c))
    buf.reshape(-1)[:n] = x.reshape(-1)
    for s in range(p - 1):
        comm.send(buf[(r - s) % p].copy(), (r + 1) % p)
        buf[(r - s - 1) % p] += comm.recv((r - 1) % p)
    for s in range(p - 1):
        comm.send(buf[(r - s + 1) % p].copy(), (r + 1) % p)
        buf[(r - s) % p] = comm.recv((r - 1) % p)
    return buf.reshape(-1)[:n].reshape(x.shape)
