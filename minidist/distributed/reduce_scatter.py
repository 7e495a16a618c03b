"""Reduce-scatter: reduce every rank's array, but leave only chunk ``r`` of the result on
rank ``r`` (source notes' operator 4; the first half of ring all-reduce and of ZeRO-2).

The flattened input is cut into ``p`` chunks of ``c = ceil(n/p)`` elements, zero-padded
(see :mod:`.ops`); the return value is this rank's reduced chunk, ``c`` elements.

* ``ring`` — ``p−1`` steps around the ring ``r → r+1``; in step s rank r passes on the
  partial sum of chunk ``r−s−1`` and adds its own data to chunk ``r−s−2`` it receives:
  ``(p−1)·(α + n/(pβ))``, ``(p−1)/p·n`` bytes per rank (Patarasuk & Yuan 2009).
* ``recursive_halving`` — ``log p`` rounds exchanging n/2, n/4, … with partners at distance
  p/2, p/4, …: ``log p·α + (p−1)/p·n/β`` (Thakur et al. 2005 §4.5); other p via the fold.
* ``pairwise`` — step s: send chunk ``r+s`` straight to its owner ``r+s``, receive my chunk
  from ``r−s``: ``(p−1)·(α + n/(pβ))``, good for any p, no forwarding.
"""
from __future__ import annotations

import numpy as np

from .halving_doubling import fold_in, fold_out, halving
from .ops import as_chunks, check_op, finish, pick, reduce_into


def ring_schedule(p: int, r: int) -> list[tuple[int, int, int]]:
    """The ring reduce-scatter of rank r as data: ``(step, chunk sent right, chunk received
    from the left and reduced)``. Plots and tests read it without running any rank."""
    return [(s, (r - s - 1) % p, (r - s - 2) % p) for s in range(p - 1)]


def ring_reduce_scatter(comm, buf, op) -> None:
    """In place on ``buf`` (p, c): afterwards ``buf[rank]`` is the fully reduced chunk."""
    p, r = comm.size, comm.rank
    right, left = (r + 1) % p, (r - 1) % p
    tmp = np.empty_like(buf[0])                             # (c,)
    call, sendrecv = comm.call, comm.sendrecv        # looked up once: the loop runs p−1 times per call
    for s, send_chunk, recv_chunk in ring_schedule(p, r):
        call.step = s
        # why: pass my running sum of one chunk to the right, add the left's into the next
        got = sendrecv(buf[send_chunk], right, left, 0, tmp)
        reduce_into(buf[recv_chunk], got, op)


def _ring(comm, buf, op):
    ring_reduce_scatter(comm, buf, op)
    return buf[comm.rank].copy()


def _recursive_halving(comm, buf, op):
    nr = fold_in(comm, buf, op)
    if nr >= 0:
        halving(comm, buf, nr, op)
    fold_out(comm, buf, blocks_only=True)
    return buf[comm.rank].copy()


def _pairwise(comm, buf, op):
    p, r = comm.size, comm.rank
    acc, tmp = buf[r].copy(), np.empty_like(buf[r])          # (c,)
    for s in range(1, p):
        comm.call.step = s - 1
        dst, src = (r + s) % p, (r - s) % p
        # why: my contribution to rank dst's chunk goes straight to it; rank src's comes to me
        reduce_into(acc, comm.sendrecv(buf[dst], dst, src, out=tmp), op)
    return acc


ALGORITHMS = {"ring": _ring, "recursive_halving": _recursive_halving, "pairwise": _pairwise}


def reduce_scatter(comm, x, op: str = "sum", algorithm: str = "ring", *, async_op: bool = False, **opts):
    """This rank's chunk (``ceil(n/p)`` elements, zero-padded) of the reduced flattened ``x``."""
    check_op(op)
    impl = pick(ALGORITHMS, "reduce_scatter", algorithm)
    with comm.collective("reduce_scatter", algorithm, x, reduce_op=op, **opts) as call:
        buf, _ = as_chunks(x, comm.size)                    # (p, c) private copy
        out = impl(comm, buf, op) if comm.size > 1 else buf[0].copy()
        out = finish(out, op, comm.size)
    return call.result(out, async_op)
