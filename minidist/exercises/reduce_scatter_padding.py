"""Exercise: ring reduce-scatter with zero padding (the first half of ring all-reduce, ZeRO-2's
gradient sync). Reference: ``dist.reduce_scatter(comm, x, algorithm="ring")``
(minidist/distributed/reduce_scatter.py; padding rules in minidist/distributed/ops.py).
"""
from __future__ import annotations

import numpy as np

from .. import distributed as dist
from .grading import Wrong, as_array
from .ranks import check_ring_traffic, run_on_ranks, tagged_diagnosis

NAME = "reduce_scatter_padding"
TOPIC = "collectives"
TITLE = "Ring reduce-scatter with zero padding (any n, any p)"
NOTEBOOK = "02_collectives"
FUNCTIONS = ("reduce_scatter",)
FORBIDDEN = ("all_reduce", "reduce_scatter_", "all_gather", "as_chunks")

STUB = '''"""Ring reduce-scatter with padding, on point-to-point messages only.

Every rank holds an array ``x`` (any shape, n elements). Rank r must return chunk r of the
element-wise SUM over all ranks of the flattened x:

* chunks have c = ceil(n / p) elements each (p = comm.size). When p does not divide n,
  pad the flattened input with zeros to p * c elements first — exactly what
  ``dist.reduce_scatter`` and ZeRO do, so every rank owns the same number of elements
  and every message has the same size. Rank r owns elements [r*c, (r+1)*c) of the
  padded vector; the last ranks' chunks end in zeros (for n=7, p=5 rank 4 gets [0, 0]).
* Ring schedule, p - 1 steps: in step s rank r sends its running sum of chunk
  (r - s - 1) % p to its right neighbour (r + 1) % p, receives chunk (r - s - 2) % p
  from its left neighbour (r - 1) % p and adds it to its own data of that chunk.
  After the last step, chunk r on rank r holds the sum over all ranks.

Use only comm.send / comm.recv (or isend / irecv) and comm.rank / comm.size; sends are
buffered, so "send, then receive" does not deadlock. Each rank sends exactly p - 1
messages of c elements, all to its right neighbour: the grader reads comm.log.

Return a 1-D array of c elements; do not modify x.
"""
import numpy as np


def reduce_scatter(comm, x):
    """This rank's chunk (ceil(n/p) elements, zero-padded) of the sum of x over all ranks."""
    raise NotImplementedError
'''

HINTS = [
    "c = -(-n // p) is ceil(n/p) in integers; buf = np.zeros((p, c)); buf.reshape(-1)[:n] = x.reshape(-1).",
    "Send buf[(r - s - 1) % p] to the right, then buf[(r - s - 2) % p] += comm.recv(left).",
    "At the end return buf[r].copy().",
    "np.array_split gives chunks of unequal sizes: that is exactly the padding this exercise is about.",
]

RULE = ("In step s rank r sends chunk (r - s - 1) % p and adds the received data into chunk (r - s - 2) % p; "
        "a chunk that misses a rank's data means one of these indices is off, or you replaced instead of adding.")


def reference():
    class Reference:
        @staticmethod
        def reduce_scatter(comm, x):
            return dist.reduce_scatter(comm, x, op="sum", algorithm="ring")
    return Reference


def _inputs(p, shape, seed):
    rng = np.random.default_rng(seed)
    return [rng.integers(1, 10, size=shape).astype(np.float64) for _ in range(p)]


def _expected(xs, p):
    n = xs[0].size
    c = -(-n // p)
    total = np.zeros(p * c)
    total[:n] = sum(x.reshape(-1) for x in xs)
    return total.reshape(p, c), c


def _chunk_of(out, r, c, p):
    return out if c == r else None


def _check_values(sol, p, shape, seed):
    xs = _inputs(p, shape, seed)
    n = xs[0].size
    outs, _ = run_on_ranks(sol.reduce_scatter, xs)
    want, c = _expected(xs, p)
    for r, out in enumerate(outs):
        got = as_array(out, f"rank {r}").reshape(-1)
        lo, hi = r * c, (r + 1) * c
        if got.size != c:
            real = max(0, min(hi, n) - lo)
            detail = (f"with n = {n} and p = {p} every rank returns c = ceil({n}/{p}) = {c} elements: "
                      f"rank {r} owns elements {lo}..{hi - 1} of the input padded with zeros to p*c = {p * c}")
            if real != c:
                detail += f" ({real} real element{'s' if real != 1 else ''}, then {c - real} zeros of padding)"
            if got.size == n // p and n % p:
                detail += f". You used n // p = {n // p} elements per chunk, which drops the last {n % p}"
            raise Wrong(f"rank {r} returned {got.size} elements; {detail}.")
        if np.allclose(got, want[r]):
            continue
        owner = [k for k in range(p) if np.allclose(got, want[k])]
        if owner:
            raise Wrong(f"rank {r} returned the summed chunk {owner[0]} (elements {owner[0] * c}.."
                        f"{(owner[0] + 1) * c - 1}); rank r must end with chunk r, yours end with chunk "
                        f"(r + {(owner[0] - r) % p}) % p: in step s send chunk (r - s - 1) % p and add into "
                        f"(r - s - 2) % p.")
        i = int(np.flatnonzero(~np.isclose(got, want[r]))[0])
        where = f"element {lo + i} of the padded input" + (" (padding: must be 0)" if lo + i >= n else "")
        why = tagged_diagnosis(sol.reduce_scatter, p, 2 * p, _chunk_of, RULE) if not n % p else ""
        raise Wrong(f"sum on {p} ranks, n = {n}: rank {r}, {where}: expected {want[r][i]:.6g}, got "
                    f"{got[i]:.6g}.\n{why}".strip())


def _values(p, shape, seed):
    return lambda sol: _check_values(sol, p, shape, seed)


def _traffic(p, n):
    def check(sol):
        _, sends = run_on_ranks(sol.reduce_scatter, _inputs(p, (n,), 5))
        check_ring_traffic(sends, p, n, p - 1, exact_chunk=True, name="ring reduce-scatter")
    return check


CHECKS = [
    ("4 ranks, 16 elements: rank r gets the sum of chunk r", _values(4, (16,), 1)),
    ("2 ranks, 8 elements", _values(2, (8,), 2)),
    ("3 ranks, 10 elements: padded to 12", _values(3, (10,), 3)),
    ("5 ranks, 7 elements: the last rank holds only padding", _values(5, (7,), 4)),
    ("4 ranks, a (3, 3) array: flattened and padded", _values(4, (3, 3), 6)),
    ("traffic: p-1 messages of c elements to the right neighbour", _traffic(4, 16)),
    ("traffic with padding: p = 3, n = 10, messages of 4 elements", _traffic(3, 10)),
]
