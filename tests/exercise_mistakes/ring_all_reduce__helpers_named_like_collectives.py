"""A right solution written another way: the statement's two phases as helpers named
reduce_scatter and all_gather, one zero-padded (p, c) buffer, comm.sendrecv. Must pass: the
names are the student's own, not minidist's collectives."""
import numpy as np

EXPECT = []


def reduce_scatter(comm, buf):
    p, r = comm.size, comm.rank
    for s in range(p - 1):
        buf[(r - s - 1) % p] += comm.sendrecv(buf[(r - s) % p], (r + 1) % p, (r - 1) % p)


def all_gather(comm, buf):
    p, r = comm.size, comm.rank
    for s in range(p - 1):
        buf[(r - s) % p] = comm.sendrecv(buf[(r - s + 1) % p], (r + 1) % p, (r - 1) % p)


def ring_all_reduce(comm, x):
    p, n = comm.size, x.size
    c = -(-n // p)
    buf = np.zeros((p, c), dtype=x.dtype)
    buf.reshape(-1)[:n] = x.reshape(-1)
    reduce_scatter(comm, buf)
    all_gather(comm, buf)
    return buf.reshape(-1)[:n].reshape(x.shape)
