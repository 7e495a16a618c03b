"""Exercise: recursive-doubling all-gather (Thakur, Rabenseifner & Gropp 2005, §4.2).

Reference: ``dist.all_gather(comm, chunk, algorithm="recursive_doubling")``
(minidist/distributed/all_gather.py and halving_doubling.py).
"""
from __future__ import annotations

import numpy as np

from .. import distributed as dist
from .grading import Wrong, as_array
from .ranks import describe_sends, run_on_ranks

NAME = "recursive_doubling_all_gather"
TOPIC = "collectives"
TITLE = "Recursive-doubling all-gather: log2(p) steps, messages that double"
NOTEBOOK = "02_collectives"
FUNCTIONS = ("all_gather",)
FORBIDDEN = ("all_gather_", "all_reduce", "doubling")

STUB = '''"""Recursive-doubling all-gather, on point-to-point messages only.

Every rank holds a 1-D ``chunk`` of c elements (same c on every rank). Every rank must
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
1-D array of p * c elements; do not modify ``chunk``.
"""
import numpy as np


def all_gather(comm, chunk):
    """Every rank's chunk, concatenated in rank order, on every rank."""
    raise NotImplementedError
'''

HINTS = [
    "buf = np.zeros((p, c)); buf[r] = chunk. Return buf.reshape(-1).",
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


def _inputs(p, c, seed):
    rng = np.random.default_rng(seed)
    return [rng.integers(1, 100, size=c).astype(np.float64) for _ in range(p)]


def _check_values(sol, p, c):
    xs = _inputs(p, c, p)
    outs, _ = run_on_ranks(sol.all_gather, xs)
    for r, out in enumerate(outs):
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
                what = f"holds {block.tolist()}, which is no rank's chunk"
            raise Wrong(f"{p} ranks: on rank {r}, block {q} (elements {q * c}..{(q + 1) * c - 1}, rank {q}'s "
                        f"chunk {xs[q].tolist()}) {what}.")


def _check_traffic(sol, p, c):
    _, sends = run_on_ranks(sol.all_gather, _inputs(p, c, 11))
    steps = p.bit_length() - 1
    for r in range(p):
        got = [(e.peer, e.nbytes // 8) for e in sends[r]]
        want = [(r ^ (1 << k), (1 << k) * c) for k in range(steps)]
        if len(got) != steps:
            raise Wrong(f"traffic on {p} ranks: rank {r} sent {len(got)} messages ({describe_sends(sends[r])}); "
                        f"recursive doubling takes log2({p}) = {steps} steps of one message each.")
        for k, ((peer, size), (w_peer, w_size)) in enumerate(zip(got, want)):
            if peer != w_peer:
                raise Wrong(f"traffic on {p} ranks: in step {k} rank {r} sends to rank {peer}; its partner is "
                            f"rank XOR 2**{k} = {r} ^ {1 << k} = {w_peer} (not rank + 2**k modulo p).")
            if size != w_size:
                raise Wrong(f"traffic on {p} ranks: in step {k} rank {r} sends {size} elements; it holds "
                            f"2**{k} = {1 << k} chunks of {c} by then and must send them all: {w_size} elements.")


def _values(p, c):
    return lambda sol: _check_values(sol, p, c)


def _traffic(p, c):
    return lambda sol: _check_traffic(sol, p, c)


CHECKS = [
    ("2 ranks, chunks of 3", _values(2, 3)),
    ("4 ranks, chunks of 3: every rank's chunk in rank order", _values(4, 3)),
    ("8 ranks, chunks of 2", _values(8, 2)),
    ("traffic on 4 ranks: partners rank ^ 2**k, messages of 2**k chunks", _traffic(4, 3)),
    ("traffic on 8 ranks", _traffic(8, 2)),
]
