"""A right solution written another way: a list of blocks (None until received), comm.sendrecv
with the partner, the held blocks sent as one concatenated array and split on arrival. Must
pass."""
import numpy as np

EXPECT = []


def all_gather(comm, chunk):
    p, r, c = comm.size, comm.rank, chunk.size
    blocks = [None] * p
    blocks[r] = chunk.copy()
    d = 1
    while d < p:
        partner = r ^ d
        mine = (r // d) * d
        theirs = (partner // d) * d
        got = comm.sendrecv(np.concatenate(blocks[mine:mine + d]), partner, partner)
        for i in range(d):
            blocks[theirs + i] = got[i * c:(i + 1) * c]
        d *= 2
    return np.concatenate(blocks)
