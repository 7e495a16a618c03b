"""All-reduce: every rank ends with the element-wise reduction of all ranks' arrays
(source notes' operator 3; data parallelism's gradient sync). Returns a new array of the
input's shape; the input is never modified.

* ``ring`` — reduce-scatter then all-gather around the ring (Patarasuk & Yuan 2009, what
  NCCL does on one node): ``2(p−1)·(α + n/(pβ))``, ``2(p−1)/p·n`` bytes per rank —
  bandwidth-optimal, but ``2(p−1)`` latencies.
* ``recursive_doubling`` — log p rounds swapping the *whole* vector with the rank at
  distance 1, 2, 4, …: ``log p·(α + n/β)``; best for short messages.
* ``rabenseifner`` — recursive-halving reduce-scatter + recursive-doubling all-gather
  (Rabenseifner 2004): ``2 log p·α + 2(p−1)/p·n/β``; MPICH's choice for long messages.
* ``reduce_broadcast`` — the naive composition: binomial reduce to rank 0, binomial
  broadcast back: ``2⌈log p⌉·(α + n/β)``.
* ``tree`` — a binary tree (children 2r+1, 2r+2) with the array cut into ``segments``
  pieces that are pipelined up (reduce) and back down (broadcast), as in NCCL's tree
  all-reduce: a segment can travel down one branch while the next comes up another.

Non-power-of-two p: recursive doubling/Rabenseifner fold the extra ranks (:mod:`.ops`).
"""
from __future__ import annotations

import numpy as np

from .all_gather import ring_all_gather
from .all_gather import ring_schedule as ag_schedule
from .broadcast import broadcast
from .halving_doubling import doubling, fold_in, fold_out, halving
from .ops import (
    as_chunks,
    check_op,
    contiguous,
    finish,
    fold_layout,
    old_rank,
    pick,
    reduce_into,
    unchunk,
)
from .reduce import reduce
from .reduce_scatter import ring_reduce_scatter
from .reduce_scatter import ring_schedule as rs_schedule


def ring_states(p: int) -> list[tuple[str, list[list[frozenset]]]]:
    """Ring all-reduce as data: after each step, which ranks' contributions every chunk
    holds on every rank (``state[rank][chunk]`` = set of ranks). Built from the same
    schedules the executor runs; used by the step-by-step figure."""
    state = [[frozenset([r]) for _ in range(p)] for r in range(p)]
    frames = [("start: every rank holds its own gradient", [row[:] for row in state])]
    for phase, schedule in (("reduce-scatter", rs_schedule), ("all-gather", ag_schedule)):
        for s in range(p - 1):
            sent = [schedule(p, r)[s] for r in range(p)]
            incoming = [state[(r - 1) % p][sent[(r - 1) % p][1]] for r in range(p)]   # from the left
            for r in range(p):
                recv_chunk = sent[r][2]
                held = state[r][recv_chunk]
                state[r][recv_chunk] = held | incoming[r] if phase == "reduce-scatter" else incoming[r]
            frames.append((f"{phase} step {s + 1}", [row[:] for row in state]))
    return frames


def _ring(comm, x, op):
    buf, n = as_chunks(x, comm.size)                        # (p, c)
    with comm.collective("reduce_scatter", "ring"):
        ring_reduce_scatter(comm, buf, op)                  # now buf[rank] is reduced
    with comm.collective("all_gather", "ring"):
        ring_all_gather(comm, buf)                          # now every buf[j] is reduced
    return unchunk(buf, n, x.shape)


def _recursive_doubling(comm, x, op):
    buf, tmp = x.reshape(-1).copy(), np.empty(x.size, dtype=x.dtype)      # (n,)
    pof2, rem = fold_layout(comm.size)
    nr = fold_in(comm, buf, op)
    d, step = 1, 0
    while nr >= 0 and d < pof2:
        partner = old_rank(nr ^ d, rem)
        comm.call.step = step
        # why: after this swap both of us hold the sum over our two groups of d ranks
        reduce_into(buf, comm.sendrecv(buf, partner, partner, out=tmp), op)
        d, step = 2 * d, step + 1
    fold_out(comm, buf)
    return buf.reshape(x.shape)


def _rabenseifner(comm, x, op):
    buf, n = as_chunks(x, comm.size)                        # (p, c)
    nr = fold_in(comm, buf, op)
    if nr >= 0:
        with comm.collective("reduce_scatter", "recursive_halving"):
            halving(comm, buf, nr, op)
        with comm.collective("all_gather", "recursive_doubling"):
            doubling(comm, buf, nr)
    fold_out(comm, buf)
    return unchunk(buf, n, x.shape)


def _reduce_broadcast(comm, x, op):
    total = reduce(comm, x, root=0, op="sum" if op == "mean" else op, algorithm="binomial")
    return broadcast(comm, total if comm.rank == 0 else x, root=0, algorithm="binomial")


def _tree(comm, x, op, segments: int = 4):
    p, r = comm.size, comm.rank
    parent = (r - 1) // 2 if r else None
    children = [c for c in (2 * r + 1, 2 * r + 2) if c < p]
    buf = x.reshape(-1).copy()                              # (n,)
    segs = np.array_split(np.arange(buf.size), max(1, min(segments, buf.size)))
    bounds = [(s[0], s[-1] + 1) if s.size else (0, 0) for s in segs]
    tmp = np.empty_like(buf)
    for k, (a, b) in enumerate(bounds):                     # up: reduce segment by segment
        comm.call.step, comm.call.phase = k, "reduce"
        for c in children:
            reduce_into(buf[a:b], comm.recv(c, out=tmp[a:b]), op)   # my children's partial sums
        if parent is not None:
            comm.send(buf[a:b], parent)     # why: a segment goes up as soon as it is complete
    for k, (a, b) in enumerate(bounds):                     # down: broadcast segment by segment
        comm.call.step, comm.call.phase = k, "broadcast"
        if parent is not None:
            comm.recv(parent, out=buf[a:b])  # the final values of this segment
        for c in children:
            comm.send(buf[a:b], c)
    return buf.reshape(x.shape)


ALGORITHMS = {"ring": _ring, "recursive_doubling": _recursive_doubling, "rabenseifner": _rabenseifner,
              "reduce_broadcast": _reduce_broadcast, "tree": _tree}


def all_reduce(comm, x, op: str = "sum", algorithm: str = "ring", *, async_op: bool = False, **opts):
    """Reduce ``x`` over all ranks with ``op``; every rank gets the result.

    ``opts``: ``stream`` ("comm"), ``wire_dtype`` / ``bytes_per_element`` (emulated payload
    size in the log and the timing), ``tag``. ``async_op=True`` returns a :class:`Work`.
    """
    check_op(op)
    impl = pick(ALGORITHMS, "all_reduce", algorithm)
    x = contiguous(x)
    with comm.collective("all_reduce", algorithm, x, reduce_op=op, **opts) as call:
        out = impl(comm, x, op) if comm.size > 1 else x.copy()
        out = finish(out, op, comm.size)
    return call.result(out, async_op)
