"""Right values, twice the traffic: each step sends the whole region of 2**(k+1) chunks its pair
will share (the partner's half still zeros) and adds what comes back. In float32 the doubled
message has the bytes of a right-sized float64 one: the held-out float32 check must still fail."""
import numpy as np

EXPECT = ["float32 elements; it holds 2**0 = 1 chunks", "float64 elements; it holds 2**0 = 1 chunks"]


def all_gather(comm, chunk):
    p, r, c = comm.size, comm.rank, chunk.size
    buf = np.zeros(p * c, dtype=chunk.dtype)
    buf[r * c:(r + 1) * c] = chunk
    k = 0
    while (1 << k) < p:
        d, partner = 1 << k, r ^ (1 << k)
        lo = (r >> (k + 1)) << (k + 1)
        comm.send(buf[lo * c:(lo + 2 * d) * c], partner)
        buf[lo * c:(lo + 2 * d) * c] += comm.recv(partner)
        k += 1
    return buf
