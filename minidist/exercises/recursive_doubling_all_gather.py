"""Exercise: recursive-doubling all-gather (Thakur, Rabenseifner & Gropp 2005, §4.2).

Reference: ``dist.all_gather(comm, chunk, algorithm="recursive_doubling")``
(minidist/distributed/all_gather.py and halving_doubling.py).
"""
from __future__ import annotations

import numpy as np

from .. import distributed as dist
from .grading import Wrong, as_array
from .ranks import COLLECTIVES, check_dtype, describe_sends, elements, run_on_ranks

NAME = "recursive_doubling_all_gather"
TOPIC = "collectives"
TITLE = "Recursive-doubling all-gather: log2(p) steps, messages that double"
NOTEBOOK = "02_collectives"
FUNCTIONS = ("all_gather",)
FORBIDDEN = COLLECTIVES

STUB = '''"""Recursive-doubling all-gather, on point-to-point messages only.

Every rank holds a 1-D ``chunk`` of c elements (same c and dtype on every rank: float32
or float64). Every rank must
return the concatenation of all ranks' chunks in rank order: p * c elements
(p = comm.size, a power of two here: 2, 4, 8).

Recursive doubling (Thakur, Rabenseifner & Gropp 2005) needs only log2(p) steps:

* keep a buffer of p * c elements; put your own chunk at block ``rank``;
* in step k = 0, 1, ..., log2(p) - 1, your partner is ``rank XOR 2**k`` (``rank ^ (1 << k)``);
  before the step you hold the 2**k blocks of your group of 2**k ranks (the ranks that
  agree with you on every bit above bit k), starting at block ``(rank >> k) << k``;
  send ALL of them to your partner in one message and receive the partner's 2**k
  blocks, which go right next to yours;
* after log2(p) steps you hold all p blocks.

Each rank sends log2(p) messages, of c, 2c, 4c, ... elements — (p-1)*c in all, the
same volume as a ring but with log2(p) latencies instead of p - 1. The grader reads
comm.log to check the partners and the sizes.

Use only comm.send / comm.recv (or isend / irecv), comm.rank and comm.size. Return a
1-D array of p * c elements in the chunk's dtype (float64 for float32 chunks is fine too);
do not modify ``chunk``. The grader also tries chunk sizes and dtypes of its own, drawn
from the seed it prints.

Not allowed (the grader looks at what your code calls or imports): minidist's collectives
dist.all_reduce, dist.reduce_scatter, dist.all_gather, dist.reduce and dist.broadcast
(and their modules, such as minidist.distributed.halving_doubling and
minidist.distributed.collectives).
Helpers of your own may have any name.
"""
import numpy as np


def all_gather(comm, chunk):
    """Every rank's chunk, concatenated in rank order, on every rank."""
    raise NotImplementedError
'''

HINTS = [
    "buf = np.zeros((p, c), dtype=chunk.dtype); buf[r] = chunk. Return buf.reshape(-1).",
    "Step k: d = 1 << k; partner = r ^ d; mine = (r >> k) << k; theirs = (partner >> k) << k.",
    "Send buf[mine:mine + d], receive into buf[theirs:theirs + d].",
    "If a block stays zero, you sent only your own chunk instead of everything you hold.",
]


def reference():
    class Reference:
        @staticmethod
        def all_gather(comm, chunk):
            return dist.all_gather(comm, chunk, algorithm="recursive_doubling")
    return Reference


def _inputs(p, c, seed, dtype=np.float64, integers=True):
    rng = np.random.default_rng(seed)
    if integers:
        return [rng.integers(1, 100, size=c).astype(dtype) for _ in range(p)]
    return [rng.normal(size=c).astype(dtype) for _ in range(p)]


def _check_values(sol, p, c, seed=None, dtype=np.float64):
    xs = _inputs(p, c, p if seed is None else seed, dtype, integers=seed is None)
    outs, _ = run_on_ranks(sol.all_gather, xs)
    for r, out in enumerate(outs):
        check_dtype(out, dtype, f"{p} ranks, {np.dtype(dtype)} chunks of {c}: rank {r}")
        got = as_array(out, f"rank {r}").reshape(-1)
        if got.size != p * c:
            raise Wrong(f"{p} ranks, chunks of {c}: rank {r} returned {got.size} elements; all-gather returns "
                        f"p * c = {p * c} (every rank's chunk, in rank order).")
        for q in range(p):
            block = got[q * c:(q + 1) * c]
            if np.array_equal(block, xs[q]):
                continue
            other = [k for k in range(p) if np.array_equal(block, xs[k])]
            if other:
                what = f"holds rank {other[0]}'s chunk: blocks go in rank order, rank q's chunk at block q"
            elif not block.any():
                what = ("is still zero: rank {q}'s chunk never reached it — in step k send ALL the 2**k blocks "
                        "you hold, not only your own chunk").format(q=q)
            else:
                what = f"holds {np.round(block, 6).tolist()}, which is no rank's chunk"
            raise Wrong(f"{p} ranks: on rank {r}, block {q} (elements {q * c}..{(q + 1) * c - 1}, rank {q}'s "
                        f"chunk {np.round(xs[q].astype(np.float64), 6).tolist()}) {what}.")


def _check_traffic(sol, p, c, dtype=np.float64):
    _, sends = run_on_ranks(sol.all_gather, _inputs(p, c, 11, dtype))
    steps = p.bit_length() - 1
    width = dtype
    if all(e.nbytes == 8 * (1 << k) * c and e.dtype in (None, np.float64) for r in range(p) for k, e in enumerate(sends[r])):
        width = np.float64                  # a float64 buffer: the same elements, 8 bytes each
    for r in range(p):
        got = [(e.peer, elements(e, width)) for e in sends[r]]
        want = [(r ^ (1 << k), (1 << k) * c) for k in range(steps)]
        if len(got) != steps:
            raise Wrong(f"traffic on {p} ranks: rank {r} sent {len(got)} messages ({describe_sends(sends[r], width)}); "
                        f"recursive doubling takes log2({p}) = {steps} steps of one message each.")
        for k, ((peer, size), (w_peer, w_size)) in enumerate(zip(got, want)):
            if peer != w_peer:
                raise Wrong(f"traffic on {p} ranks: in step {k} rank {r} sends to rank {peer}; its partner is "
                            f"rank XOR 2**{k} = {r} ^ {1 << k} = {w_peer} (not rank + 2**k modulo p).")
            if size != w_size:
                raise Wrong(f"traffic on {p} ranks: in step {k} rank {r} sends {size:g} {np.dtype(width)} elements; it holds "
                            f"2**{k} = {1 << k} chunks of {c} by then and must send them all: {w_size} elements.")


def _values(p, c):
    return lambda sol: _check_values(sol, p, c)


def _traffic(p, c):
    return lambda sol: _check_traffic(sol, p, c)


def held_out(sol, rng):
    """2, 4 and 8 ranks, chunks of 1 to 5 non-integer float32 or float64 values."""
    for p, dtype in zip((2, 4, 8), (np.float32, np.float64, np.float32)):
        _check_values(sol, p, int(rng.integers(1, 6)), int(rng.integers(1 << 30)), dtype)


def held_out_traffic(sol, rng):
    """float32 chunks: message sizes counted in 4-byte elements."""
    _check_traffic(sol, 8, int(rng.integers(1, 6)), np.float32)


CHECKS = [
    ("2 ranks, chunks of 3", _values(2, 3)),
    ("4 ranks, chunks of 3: every rank's chunk in rank order", _values(4, 3)),
    ("8 ranks, chunks of 2", _values(8, 2)),
    ("held out: chunk sizes 1 to 5, float32 and float64 values", held_out),
    ("traffic on 4 ranks: partners rank ^ 2**k, messages of 2**k chunks", _traffic(4, 3)),
    ("traffic on 8 ranks", _traffic(8, 2)),
    ("held out traffic: float32 chunks, counted in the chunk's own elements", held_out_traffic),
]
