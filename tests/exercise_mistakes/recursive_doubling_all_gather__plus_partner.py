"""Partner rank + 2**k (mod p) instead of rank XOR 2**k."""
import numpy as np

EXPECT = ["XOR"]


def all_gather(comm, chunk):
    p, r, c = comm.size, comm.rank, chunk.size
    held = {r: chunk.copy()}
    k = 0
    while (1 << k) < p:
        d = 1 << k
        comm.send(np.stack([held[q] for q in sorted(held)]), (r + d) % p)
        got = comm.recv((r - d) % p).reshape(-1, c)
        for i, q in enumerate(sorted((r - d - j) % p for j in range(len(got)))):
            held.setdefault(q, got[i])
        k += 1
    return np.concatenate([held.get(q, np.zeros(c)) for q in range(p)])
