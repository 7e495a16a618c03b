"""Wrong: every chunk is summed in float32 whatever x's dtype, so a float64 array comes back
as float32 with half its digits gone."""
import numpy as np

EXPECT = ["float32 array for a float64 input", "keep x's dtype"]


def ring_all_reduce(comm, x):
    p, r = comm.size, comm.rank
    chunks = np.array_split(x.reshape(-1).astype(np.float32), p)
    for s in range(p - 1):
        comm.send(chunks[(r - s) % p], (r + 1) % p)
        chunks[(r - s - 1) % p] = chunks[(r - s - 1) % p] + comm.recv((r - 1) % p)
    for s in range(p - 1):
        comm.send(chunks[(r - s + 1) % p], (r + 1) % p)
        chunks[(r - s) % p] = comm.recv((r - 1) % p)
    return np.concatenate(chunks).reshape(x.shape)
