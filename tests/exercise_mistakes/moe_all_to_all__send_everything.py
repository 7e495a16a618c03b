"""Sends every rank the whole buffer and lets it pick its experts' slots."""
import numpy as np

EXPECT = ["bytes", "WHOLE buffer"]


def dispatch(comm, buf):
    ep, r = comm.size, comm.rank
    E, C, h = buf.shape
    El = E // ep
    for j in range(ep):
        if j != r:
            comm.send(buf, j)
    out = np.empty((El, ep * C, h), dtype=buf.dtype)
    for j in range(ep):
        other = buf if j == r else comm.recv(j)
        out[:, j * C:(j + 1) * C] = other[r * El:(r + 1) * El]
    return out


def combine(comm, y):
    ep, r = comm.size, comm.rank
    El, S, h = y.shape
    C = S // ep
    for j in range(ep):
        if j != r:
            comm.send(y, j)
    out = np.empty((El * ep, C, h), dtype=y.dtype)
    for j in range(ep):
        other = y if j == r else comm.recv(j)
        out[j * El:(j + 1) * El] = other[:, r * C:(r + 1) * C]
    return out
