"""All-gather: every rank contributes a chunk and every rank ends with all of them, in rank
order (source notes' operator 5; the second half of ring all-reduce, ZeRO-3's parameter
gather). Returns the **flattened** concatenation ``(p·chunk.size,)``; every rank must
give a chunk of the same size. ``n`` below is the size of the gathered result.

* ``ring`` — ``p−1`` steps; in step s rank r forwards chunk ``r−s`` to ``r+1``:
  ``(p−1)·(α + n/(pβ))``, ``(p−1)/p·n`` bytes per rank.
* ``recursive_doubling`` — partners at distance 1, 2, 4, … swap everything they hold:
  ``log p·α + (p−1)/p·n/β`` (Thakur et al. 2005 §4.2); other p via MPICH's fold.
* ``bruck`` — ``⌈log p⌉`` rounds for *any* p: in round k send the first ``min(2^k, p−2^k)``
  chunks I hold to rank ``r−2^k``, receive as many from ``r+2^k``, then rotate
  (Bruck et al. 1997): ``⌈log p⌉·α + (p−1)/p·n/β``.
"""
from __future__ import annotations

import numpy as np

from .halving_doubling import doubling, fold_in, fold_out
from .ops import contiguous, pick


def ring_schedule(p: int, r: int) -> list[tuple[int, int, int]]:
    """The ring all-gather of rank r as data: ``(step, chunk sent right, chunk received)``."""
    return [(s, (r - s) % p, (r - s - 1) % p) for s in range(p - 1)]


def ring_all_gather(comm, buf) -> None:
    """In place on ``buf`` (p, c) where ``buf[rank]`` is filled: fills every other row."""
    p, r = comm.size, comm.rank
    right, left = (r + 1) % p, (r - 1) % p
    call, sendrecv = comm.call, comm.sendrecv        # looked up once: the loop runs p−1 times per call
    for s, send_chunk, recv_chunk in ring_schedule(p, r):
        call.step = s
        # why: forward the chunk I got last step (my own at s=0); receive the next one from the left
        sendrecv(buf[send_chunk], right, left, 0, buf[recv_chunk])


def _ring(comm, buf):
    ring_all_gather(comm, buf)
    return buf


def _recursive_doubling(comm, buf):
    nr = fold_in(comm, buf)
    if nr >= 0:
        doubling(comm, buf, nr)
    fold_out(comm, buf)
    return buf


def _bruck(comm, buf):
    p, r = comm.size, comm.rank
    held = np.empty_like(buf)          # (p, ...) held[i] = chunk of rank (r + i) % p
    held[0] = buf[r]
    d, step = 1, 0
    while d < p:
        cnt = min(d, p - d)
        comm.call.step = step
        # why: rank r−d is missing exactly the chunks I hold; rank r+d holds the next ones I miss
        comm.sendrecv(held[:cnt], (r - d) % p, (r + d) % p, out=held[d:d + cnt])
        d, step = 2 * d, step + 1
    return np.roll(held, r, axis=0)    # back to absolute rank order


ALGORITHMS = {"ring": _ring, "recursive_doubling": _recursive_doubling, "bruck": _bruck}


def all_gather(comm, chunk, algorithm: str = "ring", *, async_op: bool = False, **opts):
    """Concatenate every rank's ``chunk`` (flattened) in rank order, on every rank."""
    impl = pick(ALGORITHMS, "all_gather", algorithm)
    chunk = contiguous(chunk)
    with comm.collective("all_gather", algorithm, chunk, **opts) as call:
        buf = np.empty((comm.size, chunk.size), dtype=chunk.dtype)    # (p, c)
        buf[comm.rank] = chunk.reshape(-1)
        out = (impl(comm, buf) if comm.size > 1 else buf).reshape(-1)
    return call.result(out, async_op)
