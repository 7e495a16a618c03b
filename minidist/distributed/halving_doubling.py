"""Recursive halving and recursive doubling over ``(p, c)`` blocks, for any ``p``.

The building blocks of Rabenseifner's all-reduce, of the recursive-halving reduce-scatter
and of the recursive-doubling all-gather (Thakur, Rabenseifner & Gropp 2005, §4.4–4.5):

* **recursive halving** (reduce-scatter): in the first round a rank swaps *half* the
  vector with the rank ``pof2/2`` away and reduces the half it keeps; the distance and the
  data halve every round. After ``log p`` rounds each rank holds one fully reduced block.
  Bytes sent: ``n/2 + n/4 + … = (p−1)/p·n``.
* **recursive doubling** (all-gather): the mirror image: distance 1, 2, 4, …, the data
  exchanged doubles each round until every rank has every block.

Non-power-of-two ``p`` uses MPICH's fold (see :mod:`.ops`): the extra ranks first give
their data to a neighbour (:func:`fold_in`) and get the result back at the end
(:func:`fold_out`); the ``pof2`` survivors own the blocks of the ranks they stand for.
"""
from __future__ import annotations

import numpy as np

from .ops import first_block, fold_layout, new_rank, old_rank, reduce_into


def fold_in(comm, buf, op=None) -> int:
    """Pair up the first ``2·rem`` ranks; returns this rank's new rank (-1: sits out).

    With ``op``: the even rank's whole vector is reduced into the odd rank's (reduce-scatter,
    all-reduce). Without: only the even rank's own block moves (all-gather).
    """
    p, r = comm.size, comm.rank
    _, rem = fold_layout(p)
    if r < 2 * rem:
        old, comm.call.phase = comm.call.phase, "fold"
        if r % 2 == 0:
            # why: p is not a power of two, so I hand my data to rank r+1 and sit out
            comm.send(buf if op else buf[r], r + 1)
        elif op:
            reduce_into(buf, comm.recv(r - 1), op)
        else:
            comm.recv(r - 1, out=buf[r - 1])
        comm.call.phase = old
    return new_rank(r, rem)


def fold_out(comm, buf, blocks_only: bool = False) -> None:
    """Give the ranks that sat out their result: the full vector, or just their own block."""
    p, r = comm.size, comm.rank
    _, rem = fold_layout(p)
    if r < 2 * rem:
        old, comm.call.phase = comm.call.phase, "unfold"
        if r % 2:
            # why: rank r-1 sat out the power-of-two part and is waiting for its result
            comm.send(buf[r - 1] if blocks_only else buf, r - 1)
        else:
            comm.recv(r + 1, out=buf[r] if blocks_only else buf)
        comm.call.phase = old


def halving(comm, buf, nr: int, op: str, step0: int = 0) -> tuple[int, int]:
    """Recursive-halving reduce-scatter among the pof2 survivors, in place on ``buf``.

    Returns the block range ``[lo, hi)`` this rank now holds fully reduced.
    """
    pof2, rem = fold_layout(comm.size)
    tmp = np.empty_like(buf)
    lo, hi, d, step = 0, pof2, pof2 // 2, step0          # new-rank range I am responsible for
    while d >= 1:
        partner = nr ^ d
        mid = lo + d
        keep, give = ((mid, hi), (lo, mid)) if nr & d else ((lo, mid), (mid, hi))
        k0, k1 = first_block(keep[0], rem), first_block(keep[1], rem)
        g0, g1 = first_block(give[0], rem), first_block(give[1], rem)
        comm.call.step = step
        # why: my partner reduces the half I give away, I reduce the half I keep
        got = comm.sendrecv(buf[g0:g1], old_rank(partner, rem), old_rank(partner, rem), out=tmp[k0:k1])
        reduce_into(buf[k0:k1], got, op)
        lo, hi = keep
        d //= 2
        step += 1
    return first_block(lo, rem), first_block(hi, rem)


def doubling(comm, buf, nr: int, step0: int = 0) -> None:
    """Recursive-doubling all-gather among the pof2 survivors, in place on ``buf``."""
    pof2, rem = fold_layout(comm.size)
    d, step = 1, step0
    while d < pof2:
        partner = nr ^ d
        mine, theirs = nr & ~(d - 1), partner & ~(d - 1)   # first new rank of each d-sized group
        m0, m1 = first_block(mine, rem), first_block(mine + d, rem)
        t0, t1 = first_block(theirs, rem), first_block(theirs + d, rem)
        comm.call.step = step
        # why: swap everything each of us has gathered so far; the data doubles every round
        comm.sendrecv(buf[m0:m1], old_rank(partner, rem), old_rank(partner, rem), out=buf[t0:t1])
        d *= 2
        step += 1
