"""A right answer on point-to-point messages: step s exchanges with ranks r ± s (pairwise)."""
import numpy as np

EXPECT = []


def dispatch(comm, buf):
    ep, r = comm.size, comm.rank
    E, C, h = buf.shape
    El = E // ep
    out = np.empty((El, ep * C, h), dtype=buf.dtype)
    out[:, r * C:(r + 1) * C] = buf[r * El:(r + 1) * El]
    for s in range(1, ep):
        dst, src = (r + s) % ep, (r - s) % ep
        got = comm.sendrecv(np.ascontiguousarray(buf[dst * El:(dst + 1) * El]), dst, src)
        out[:, src * C:(src + 1) * C] = got
    return out


def combine(comm, y):
    ep, r = comm.size, comm.rank
    El, S, h = y.shape
    C = S // ep
    out = np.empty((El * ep, C, h), dtype=y.dtype)
    out[r * El:(r + 1) * El] = y[:, r * C:(r + 1) * C]
    for s in range(1, ep):
        dst, src = (r + s) % ep, (r - s) % ep
        got = comm.sendrecv(np.ascontiguousarray(y[:, dst * C:(dst + 1) * C]), dst, src)
        out[src * El:(src + 1) * El] = got
    return out
