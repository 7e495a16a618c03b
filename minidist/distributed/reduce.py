"""Reduce: the element-wise sum (or mean/max/min/prod) of every rank's array, at the root
(source notes' operator 2).

* ``linear`` — every rank sends its array to the root, which adds them up one by one:
  ``(p−1)·(α + n/β)`` at the root (the naive "parameter server").
* ``binomial`` — a binomial tree, the mirror image of the binomial broadcast: in round k
  the ranks whose bit k is set send their partial sum to the rank ``2^k`` below and drop
  out: ``⌈log p⌉·(α + n/β)``; every non-root rank sends exactly ``n`` bytes once.

Reduction arithmetic is not charged to the simulated clock (Thakur et al.'s γ = 0).
Returns the result on the root and ``None`` elsewhere; the input is never modified.
"""
from __future__ import annotations

import numpy as np

from .ops import check_op, contiguous, finish, pick, reduce_into


def _linear(comm, x, root, op):
    if comm.rank != root:
        comm.send(x, root)                  # everyone ships its whole array to the root
        return None
    acc, tmp = x.copy(), np.empty_like(x)
    for r in range(comm.size):
        if r != root:
            comm.call.step = r - (r > root)
            reduce_into(acc, comm.recv(r, out=tmp), op)
    return acc


def _binomial(comm, x, root, op):
    p, vr = comm.size, (comm.rank - root) % comm.size
    acc, tmp = x.copy(), np.empty_like(x)
    mask = 1
    while mask < p:
        comm.call.step = mask.bit_length() - 1
        if vr & mask:
            comm.send(acc, (vr - mask + root) % p)   # my subtree's partial result goes to my parent
            return None
        if vr + mask < p:
            reduce_into(acc, comm.recv((vr + mask + root) % p, out=tmp), op)   # a child's partial result
        mask <<= 1
    return acc


ALGORITHMS = {"binomial": _binomial, "linear": _linear}


def reduce(comm, x, root: int = 0, op: str = "sum", algorithm: str = "binomial", *,
           async_op: bool = False, **opts):
    """Reduce every rank's ``x`` with ``op`` onto ``root``. ``opts``: stream, wire_dtype, bytes_per_element, tag."""
    check_op(op)
    impl = pick(ALGORITHMS, "reduce", algorithm)
    x = contiguous(x)
    with comm.collective("reduce", algorithm, x, root=root, reduce_op=op, **opts) as call:
        out = impl(comm, x, root, op) if comm.size > 1 else x.copy()
        if out is not None:
            out = finish(out, op, comm.size)
    return call.result(out, async_op)
