"""A correct student solution (isend/irecv, np.array_split chunks): must pass."""
import numpy as np

EXPECT = []


def ring_all_reduce(comm, x):
    p, r = comm.size, comm.rank
    chunks = np.array_split(x.reshape(-1).copy(), p)
    right, left = (r + 1) % p, (r - 1) % p
    for s in range(p - 1):
        req = comm.isend(chunks[(r - s) % p], right)
        chunks[(r - s - 1) % p] = chunks[(r - s - 1) % p] + comm.irecv(left).wait()
        req.wait()
    for s in range(p - 1):
        comm.send(chunks[(r - s + 1) % p], right)
        chunks[(r - s) % p] = comm.recv(left)
    return np.concatenate(chunks).reshape(x.shape)
