"""Exercise: ring reduce-scatter with zero padding (the first half of ring all-reduce, ZeRO-2's
gradient sync). Reference: ``dist.reduce_scatter(comm, x, algorithm="ring")``
(minidist/distributed/reduce_scatter.py; padding rules in minidist/distributed/ops.py).
"""
from __future__ import annotations

import numpy as np

from .. import distributed as dist
from .grading import Wrong, as_array, expected_got, shapes
from .ranks import COLLECTIVES, check_dtype, check_ring_traffic, run_on_ranks, tagged_diagnosis

NAME = "reduce_scatter_padding"
TOPIC = "collectives"
TITLE = "Ring reduce-scatter with zero padding (any n, any p)"
NOTEBOOK = "02_collectives"
FUNCTIONS = ("reduce_scatter",)
FORBIDDEN = COLLECTIVES + ("minidist.distributed.ops",)     # ops: minidist's padding (as_chunks)

STUB = '''"""Ring reduce-scatter with padding, on point-to-point messages only.

Every rank holds an array ``x`` (any shape, 1-D to 4-D, n elements; float32 or float64, the
same on every rank). Rank r must return chunk r of the element-wise SUM over all ranks of
the flattened x:

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

Return a 1-D array of c elements in x's dtype (float64 for a float32 x is fine too, a
narrower dtype is not); do not modify x. Messages are counted in elements of x's dtype (or
of float64, if your buffer is float64). The grader also tries shapes, dtypes and rank counts of its own,
drawn from the seed it prints.

Not allowed (the grader looks at what your code calls or imports): minidist's collectives
dist.all_reduce, dist.reduce_scatter, dist.all_gather, dist.reduce and dist.broadcast
(and their modules, such as minidist.distributed.halving_doubling and
minidist.distributed.collectives), and
minidist.distributed.ops (its padding helpers). Helpers of your own may have any name.
"""
import numpy as np


def reduce_scatter(comm, x):
    """This rank's chunk (ceil(n/p) elements, zero-padded) of the sum of x over all ranks."""
    raise NotImplementedError
'''

HINTS = [
    "c = -(-n // p) is ceil(n/p) in integers; buf = np.zeros((p, c), dtype=x.dtype); "
    "buf.reshape(-1)[:n] = x.reshape(-1).",
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


def _inputs(p, shape, seed, dtype=np.float64, integers=True):
    rng = np.random.default_rng(seed)
    if integers:
        return [rng.integers(1, 10, size=shape).astype(dtype) for _ in range(p)]
    return [(rng.normal(size=shape) * 10).astype(dtype) for _ in range(p)]


def _expected(xs, p):
    n = xs[0].size
    c = -(-n // p)
    total = np.zeros(p * c)
    total[:n] = sum(x.reshape(-1).astype(np.float64) for x in xs)
    return total.reshape(p, c), c


def _chunk_of(out, r, c, p):
    return out if c == r else None


def _check_values(sol, p, shape, seed, dtype=np.float64, integers=True):
    xs = _inputs(p, shape, seed, dtype, integers)
    n = xs[0].size
    outs, _ = run_on_ranks(sol.reduce_scatter, xs)
    want, c = _expected(xs, p)
    tol = {"rtol": 1e-5, "atol": 1e-5 * float(np.abs(want).max())} if np.dtype(dtype) == np.float32 else \
        {"rtol": 1e-9, "atol": 1e-9}
    case = f"sum on {p} ranks, {np.dtype(dtype)} x of shape {shape} (n = {n})"
    for r, out in enumerate(outs):
        check_dtype(out, dtype, f"{case}: rank {r}")
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
            raise Wrong(f"{case}: rank {r} returned {got.size} elements; {detail}.")
        if np.allclose(got, want[r], **tol):
            continue
        owner = [k for k in range(p) if np.allclose(got, want[k], **tol)]
        if owner:
            raise Wrong(f"{case}: rank {r} returned the summed chunk {owner[0]} (elements {owner[0] * c}.."
                        f"{(owner[0] + 1) * c - 1}); rank r must end with chunk r, yours end with chunk "
                        f"(r + {(owner[0] - r) % p}) % p: in step s send chunk (r - s - 1) % p and add into "
                        f"(r - s - 2) % p.")
        i = int(np.flatnonzero(~np.isclose(got, want[r], **tol))[0])
        where = f"element {lo + i} of the padded input" + (" (padding: must be 0)" if lo + i >= n else "")
        why = tagged_diagnosis(sol.reduce_scatter, p, 2 * p, _chunk_of, RULE) if not n % p else ""
        raise Wrong(f"{case}: rank {r}, {where}: {expected_got(want[r][i], got[i])}.\n{why}".strip())


def _values(p, shape, seed):
    return lambda sol: _check_values(sol, p, shape, seed)


def _traffic(p, shape, seed=5, dtype=np.float64):
    def check(sol):
        _, sends = run_on_ranks(sol.reduce_scatter, _inputs(p, shape, seed, dtype))
        check_ring_traffic(sends, p, int(np.prod(shape)), p - 1, exact_chunk=True, name="ring reduce-scatter",
                           dtype=dtype, shape=shape)
    return check


def held_out_values(sol, rng):
    """Shapes 1-D to 4-D, float64 and float32, non-integer values, 2 to 6 ranks."""
    for i, shape in enumerate(shapes(rng, 4, 1, 4, size=(1, 5))):
        dtype = (np.float32, np.float64)[i % 2]
        _check_values(sol, int(rng.integers(2, 7)), shape, int(rng.integers(1 << 30)), dtype, integers=False)


def held_out_traffic(sol, rng):
    """A float32 (a, b) array whose n the ranks do not divide: padded messages, 4-byte elements."""
    p = int(rng.integers(3, 6))
    a, b = int(rng.integers(1, p)), int(rng.integers(2, 6))
    b += (a * b) % p == 0                   # n not a multiple of p: the padding shows
    _traffic(p, (a, b), int(rng.integers(1 << 30)), np.float32)(sol)


CHECKS = [
    ("4 ranks, 16 elements: rank r gets the sum of chunk r", _values(4, (16,), 1)),
    ("2 ranks, 8 elements", _values(2, (8,), 2)),
    ("3 ranks, 10 elements: padded to 12", _values(3, (10,), 3)),
    ("5 ranks, 7 elements: the last rank holds only padding", _values(5, (7,), 4)),
    ("4 ranks, a (3, 3) array: flattened and padded", _values(4, (3, 3), 6)),
    ("held out: shapes 1-D to 4-D, float32 and float64, 2 to 6 ranks; no narrower dtype", held_out_values),
    ("traffic: p-1 messages of c elements to the right neighbour", _traffic(4, (16,))),
    ("traffic with padding: p = 3, n = 10, messages of 4 elements", _traffic(3, (10,))),
    ("held out traffic: a float32 2-D array, counted in the array's own elements", held_out_traffic),
]
