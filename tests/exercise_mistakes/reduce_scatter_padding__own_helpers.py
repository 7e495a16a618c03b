"""A right solution written another way: helpers of the student's own named pad and
as_chunks (minidist has a function as_chunks, which this file never imports), a list of
chunks in x's dtype, isend/irecv. Must pass."""
import numpy as np

EXPECT = []


def pad(flat, total):
    out = np.zeros(total, dtype=flat.dtype)
    out[:flat.size] = flat
    return out


def as_chunks(x, p):
    flat = x.reshape(-1)
    c = -(-flat.size // p)
    return [a.copy() for a in pad(flat, p * c).reshape(p, c)]


def reduce_scatter(comm, x):
    p, r = comm.size, comm.rank
    chunks = as_chunks(x, p)
    for s in range(p - 1):
        req = comm.isend(chunks[(r - s - 1) % p], (r + 1) % p)
        chunks[(r - s - 2) % p] += comm.irecv((r - 1) % p).wait()
        req.wait()
    return chunks[r]
