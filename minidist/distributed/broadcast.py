"""Broadcast: the root's array ends up on every rank (source notes' operator 1).

Three algorithms, from naive to the one MPICH uses for long messages
(Thakur, Rabenseifner & Gropp 2005, §4.1):

* ``linear`` — the root sends the whole array to every other rank, one after the other:
  ``(p−1)·(α + n/β)``. Simple, and the root's link is the bottleneck.
* ``binomial`` — a binomial tree: in round k every rank that has the data sends it to the
  rank ``2^k`` further on, so the informed set doubles: ``⌈log p⌉·(α + n/β)``.
  Every non-root rank receives exactly ``n`` bytes.
* ``scatter_allgather`` (van de Geijn) — binomial *scatter* of ``p`` chunks, then ring
  *all-gather*: ``(⌈log p⌉ + p − 1)·α + 2·(p−1)/p·n/β``, bandwidth-optimal for long arrays.

``x`` on non-root ranks: an array of the root's shape and dtype (its contents are ignored,
as in ``torch.distributed.broadcast``); ``linear`` and ``binomial`` also accept ``None``.
Returns a new array on every rank.
"""
from __future__ import annotations

import numpy as np

from .all_gather import all_gather
from .ops import as_chunks, contiguous, pick, unchunk
from .scatter_gather import scatter


def _linear(comm, x, root):
    if comm.rank == root:
        for r in range(comm.size):
            if r != root:
                comm.call.step = r - (r > root)
                comm.send(x, r)          # root → every rank in turn: the root's link does all the work
        return x.copy()
    return comm.recv(root)


def _binomial(comm, x, root):
    p = comm.size
    vr = (comm.rank - root) % p             # rank relative to the root
    rounds = (p - 1).bit_length()           # ⌈log2 p⌉; in round k the distance is 2^(rounds-1-k)
    if vr == 0:
        data, mask = x.copy(), 1 << rounds
    else:
        mask = vr & -vr                     # lowest set bit: my parent is vr − mask
        comm.call.step = rounds - mask.bit_length()
        data = comm.recv((vr - mask + root) % p)   # the data reaches me once, from my parent
    mask >>= 1
    while mask > 0:                         # then I pass it to my children, farthest first
        if vr + mask < p:
            comm.call.step = rounds - mask.bit_length()
            comm.send(data, (vr + mask + root) % p)
        mask >>= 1
    return data


def _scatter_allgather(comm, x, root):
    if comm.rank == root:
        blocks, n = as_chunks(x, comm.size)           # (p, c) zero-padded
        meta = (n, x.shape)
    else:
        blocks, meta = None, (int(np.size(x)), np.shape(x))
    mine = scatter(comm, blocks, root=root, algorithm="binomial")     # each rank gets 1/p of the data
    # relative block order: block j belongs to rank j, so a plain ring all-gather reassembles it
    full = all_gather(comm, mine, algorithm="ring")                   # (p·c,)
    return unchunk(full, *meta)


ALGORITHMS = {"linear": _linear, "binomial": _binomial, "scatter_allgather": _scatter_allgather}


def broadcast(comm, x, root: int = 0, algorithm: str = "binomial", *, async_op: bool = False, **opts):
    """Copy ``x`` from ``root`` to every rank. ``opts``: stream, wire_dtype, bytes_per_element, tag."""
    impl = pick(ALGORITHMS, "broadcast", algorithm)
    if comm.rank == root:
        x = contiguous(x)
    elif x is None and algorithm == "scatter_allgather":
        raise ValueError("broadcast(algorithm='scatter_allgather') needs x with the root's shape on every rank")
    # a receiver's buffer, when given, must match the root's array: its size, dtype and shape
    # ride in every message's header and are checked (a rank that skipped a broadcast, or
    # passed another buffer, would take another call's data without a word)
    with comm.collective("broadcast", algorithm, None if x is None else np.asarray(x), root=root, **opts) as call:
        out = impl(comm, x, root) if comm.size > 1 else np.array(x, copy=True)
    return call.result(out, async_op)
