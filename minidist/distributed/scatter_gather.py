"""Scatter (root hands block j to rank j) and gather (rank j's block lands at the root).

Both come in two algorithms (Thakur, Rabenseifner & Gropp 2005, §4):

* ``linear`` — the root talks to every rank in turn: ``(p−1)·(α + n/(pβ))``.
* ``binomial`` — a binomial tree: a rank forwards (scatter) or collects (gather) the blocks
  of its whole subtree, so there are only ``⌈log p⌉`` rounds: ``⌈log p⌉·α + (p−1)/p·n/β``.

Conventions: ``scatter(comm, chunks, root)`` takes on the root an array of shape
``(p, ...)`` (or a list of ``p`` equal-shape arrays) and returns ``chunks[rank]``;
non-roots pass ``None``. ``gather(comm, x, root)`` returns on the root the **stacked**
array ``(p, *x.shape)`` in rank order (all ranks must give the same shape) and ``None``
elsewhere. Here ``n`` means the ``p`` blocks together.
"""
from __future__ import annotations

import numpy as np

from .ops import contiguous, pick


def _subtree(vr: int, p: int) -> int:
    """How many ranks (relative numbering) live in the binomial subtree rooted at vr."""
    low = vr & -vr if vr else 1 << (p - 1).bit_length()
    return min(low, p - vr)


# -- scatter --------------------------------------------------------------------------------
def _scatter_linear(comm, blocks, root):
    if comm.rank != root:
        return comm.recv(root)
    for r in range(comm.size):
        if r != root:
            comm.call.step = r - (r > root)
            comm.send(blocks[r], r)        # the root sends each rank its own block
    return blocks[root].copy()


def _scatter_binomial(comm, blocks, root):
    p = comm.size
    vr = (comm.rank - root) % p
    rounds = (p - 1).bit_length()                # ⌈log2 p⌉ rounds, the farthest child first
    if vr == 0:
        mine = np.roll(blocks, -root, axis=0)    # (p, ...) in relative order: mine[i] is for vr = i
    else:
        low = vr & -vr
        comm.call.step = rounds - low.bit_length()
        mine = comm.recv((vr - low + root) % p)  # my parent sends the blocks of my whole subtree
    mask = (vr & -vr if vr else 1 << rounds) >> 1      # my children: vr + mask, …
    while mask > 0:
        if vr + mask < p:
            cnt = min(mask, p - vr - mask)
            comm.call.step = rounds - mask.bit_length()
            comm.send(mine[mask:mask + cnt], (vr + mask + root) % p)   # half my subtree goes on
        mask >>= 1
    return mine[0].copy()


# -- gather ---------------------------------------------------------------------------------
def _gather_linear(comm, x, root):
    if comm.rank != root:
        comm.send(x, root)                  # every rank hands its block straight to the root
        return None
    out = np.empty((comm.size,) + x.shape, dtype=x.dtype)      # (p, ...)
    for r in range(comm.size):
        if r == root:
            out[r] = x
        else:
            comm.call.step = r - (r > root)
            comm.recv(r, out=out[r])
    return out


def _gather_binomial(comm, x, root):
    p = comm.size
    vr = (comm.rank - root) % p
    have = np.empty((_subtree(vr, p),) + x.shape, dtype=x.dtype)   # blocks vr, vr+1, … of my subtree
    have[0] = x
    mask = 1
    while mask < p:
        comm.call.step = mask.bit_length() - 1
        if vr & mask:
            comm.send(have, (vr - mask + root) % p)   # my subtree is complete: pass it up
            return None
        if vr + mask < p:
            cnt = min(mask, p - vr - mask)
            comm.recv((vr + mask + root) % p, out=have[mask:mask + cnt])   # a child's subtree
        mask <<= 1
    return np.roll(have, root, axis=0)      # relative → absolute rank order


SCATTER_ALGORITHMS = {"binomial": _scatter_binomial, "linear": _scatter_linear}
GATHER_ALGORITHMS = {"binomial": _gather_binomial, "linear": _gather_linear}


def scatter(comm, chunks, root: int = 0, algorithm: str = "binomial", *, async_op: bool = False, **opts):
    """Give rank j the block ``chunks[j]`` of the root; returns this rank's block."""
    impl = pick(SCATTER_ALGORITHMS, "scatter", algorithm)
    if comm.rank == root:
        chunks = np.ascontiguousarray(np.stack(chunks) if isinstance(chunks, (list, tuple)) else chunks)
        if chunks.shape[0] != comm.size:
            raise ValueError(f"scatter needs {comm.size} blocks on the root, got shape {chunks.shape}")
    with comm.collective("scatter", algorithm, None, root=root, **opts) as call:
        out = impl(comm, chunks, root) if comm.size > 1 else chunks[0].copy()
    return call.result(out, async_op)


def gather(comm, x, root: int = 0, algorithm: str = "binomial", *, async_op: bool = False, **opts):
    """Collect every rank's ``x`` at ``root`` as a stacked ``(p, *x.shape)`` array."""
    impl = pick(GATHER_ALGORITHMS, "gather", algorithm)
    x = contiguous(x)
    with comm.collective("gather", algorithm, x, root=root, **opts) as call:
        out = impl(comm, x, root) if comm.size > 1 else x[None].copy()
    return call.result(out, async_op)
