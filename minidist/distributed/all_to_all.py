"""All-to-all (every rank sends a different block to every rank; MoE's token exchange,
Ulysses' sequence↔head swap) and barrier.

``all_to_all(comm, chunks)``: ``chunks`` has shape ``(p, ...)`` (or is a list of ``p``
equal-shape arrays); block ``j`` goes to rank ``j``. Returns ``(p, ...)`` where row ``j``
came from rank ``j`` (MPI_Alltoall). ``n`` below is one rank's ``p`` blocks together.

* ``pairwise`` — step s = 1…p−1: send block ``r+s`` to rank ``r+s``, receive from ``r−s``:
  ``(p−1)·(α + n/(pβ))`` (Thakur et al. 2005 §4.6, any p).
* ``bruck`` — ``⌈log p⌉`` rounds; in round k every block whose index has bit k set moves
  ``2^k`` ranks on: ``⌈log p⌉·α + ≈ n/2·log p·β``, fewer messages, more bytes
  (Bruck et al. 1997); the choice for short messages.

``barrier(comm)`` — the dissemination barrier (Hensgen, Finkel & Manber 1988): in round k
send an empty message to ``r+2^k`` and wait for one from ``r−2^k``; after ``⌈log p⌉``
rounds every rank has heard, directly or not, from every other.
"""
from __future__ import annotations

import numpy as np

from .ops import pick


def _pairwise(comm, blocks):
    p, r = comm.size, comm.rank
    out = np.empty_like(blocks)                            # (p, ...)
    out[r] = blocks[r]
    # rows of (p, m) views: a row is an array even when a block is one number (blocks of
    # shape (p,)), where blocks[j] would be a NumPy scalar and out[j] a copy, not a view
    rows, into = blocks.reshape(p, blocks[0].size), out.reshape(p, blocks[0].size)
    for s in range(1, p):
        comm.call.step = s - 1
        dst, src = (r + s) % p, (r - s) % p
        # why: one direct message per pair; the shift s makes every rank busy every step
        comm.sendrecv(rows[dst], dst, src, out=into[src])
    return out


def _bruck(comm, blocks):
    p, r = comm.size, comm.rank
    held = np.roll(blocks, -r, axis=0)      # held[i] is (for now) the block for rank r + i
    d, step = 1, 0
    while d < p:
        idx = [i for i in range(p) if i & d]
        comm.call.step = step
        # why: blocks whose distance has bit d set still have to travel d ranks further
        got = comm.sendrecv(np.ascontiguousarray(held[idx]), (r + d) % p, (r - d) % p)
        held[idx] = got
        d, step = 2 * d, step + 1
    # held[i] came from rank r − i: put row j = the block from rank j
    return np.ascontiguousarray(held[[(r - j) % p for j in range(p)]])


ALGORITHMS = {"pairwise": _pairwise, "bruck": _bruck}


def all_to_all(comm, chunks, algorithm: str = "pairwise", *, async_op: bool = False, **opts):
    """Send ``chunks[j]`` to rank ``j``; returns the ``(p, ...)`` blocks received, by source."""
    impl = pick(ALGORITHMS, "all_to_all", algorithm)
    blocks = np.ascontiguousarray(np.stack(chunks) if isinstance(chunks, (list, tuple)) else chunks)
    if blocks.shape[:1] != (comm.size,):
        raise ValueError(f"all_to_all needs {comm.size} blocks, got shape {blocks.shape}")
    with comm.collective("all_to_all", algorithm, blocks, **opts) as call:
        out = impl(comm, blocks) if comm.size > 1 else blocks.copy()
    return call.result(out, async_op)


def _dissemination(comm):
    p, r = comm.size, comm.rank
    token = np.empty(0, dtype=np.uint8)     # a zero-byte message: only the latency α counts
    d, step = 1, 0
    while d < p:
        comm.call.step = step
        comm.sendrecv(token, (r + d) % p, (r - d) % p)   # "I have arrived" to r+d, hear from r−d
        d, step = 2 * d, step + 1


BARRIER_ALGORITHMS = {"dissemination": _dissemination}


def barrier(comm, algorithm: str = "dissemination", *, async_op: bool = False, **opts):
    """Return only after every rank of ``comm`` has called ``barrier``."""
    impl = pick(BARRIER_ALGORITHMS, "barrier", algorithm)
    with comm.collective("barrier", algorithm, **opts) as call:
        if comm.size > 1:
            impl(comm)
    return call.result(None, async_op)
