"""Exercise: ring all-reduce on send/recv (reduce-scatter + all-gather around the ring).

Reference: ``dist.all_reduce(comm, x, algorithm="ring")`` (minidist/distributed/all_reduce.py).
"""
from __future__ import annotations

import numpy as np

from .. import distributed as dist
from .grading import Wrong, shapes
from .ranks import COLLECTIVES, chunk_bounds, check_results, check_ring_traffic, run_on_ranks, tagged_diagnosis

NAME = "ring_all_reduce"
TOPIC = "collectives"
TITLE = "Ring all-reduce on comm.send / comm.recv"
NOTEBOOK = "02_collectives"
FUNCTIONS = ("ring_all_reduce",)
FORBIDDEN = COLLECTIVES                     # minidist's own collectives: what a student may call, not name

STUB = '''"""Ring all-reduce, written on point-to-point messages only.

Every rank holds an array ``x`` of the same shape (any shape, 1-D to 4-D; float32 or
float64, the same on every rank); afterwards every rank must hold the element-wise SUM over
all ranks. Do it the way NCCL does (Patarasuk & Yuan 2009):

1. Cut the flattened ``x`` into p chunks (p = comm.size), e.g. with ``np.array_split``.
2. Reduce-scatter, p - 1 steps: in step s, rank r sends its running sum of chunk
   (r - s) % p to its RIGHT neighbour (r + 1) % p, receives chunk (r - s - 1) % p from its
   LEFT neighbour (r - 1) % p and adds it into its own copy. Afterwards rank r holds the
   complete sum of chunk (r + 1) % p.
3. All-gather, p - 1 more steps: pass the completed chunks around the ring the same way,
   but now *replace* instead of adding.

Use only ``comm.send(array, dest)``, ``comm.recv(source)`` (or ``comm.isend``/``comm.irecv``
+ ``.wait()``) and ``comm.rank`` / ``comm.size``. A send does not wait for the receiver
here (buffered), so "send, then receive" in every step does not deadlock.

Each rank must send exactly 2(p - 1) messages of about n/p elements (n = x.size, counted
in x's own dtype, or in float64 if you work in a float64 buffer), all to its right
neighbour: ``2(p-1)/p * n`` elements in total, the bandwidth-optimal volume. The grader
reads ``comm.log`` to check that; gathering everything to rank 0 is not a ring.

Return a NEW array with the shape of ``x`` in x's dtype (float64 for a float32 x is fine
too; a narrower dtype is not) and do not modify ``x``. It must work
for any p >= 2 and any n, also when p does not divide n. The grader also tries shapes,
dtypes and rank counts of its own, drawn from the seed it prints.

Not allowed (the grader looks at what your code calls or imports): minidist's collectives
dist.all_reduce, dist.reduce_scatter, dist.all_gather, dist.reduce and dist.broadcast
(and their modules, such as minidist.distributed.halving_doubling and
minidist.distributed.collectives).
Helpers of your own may have any name (a ``reduce_scatter`` of your own is fine).

Try it:  python -m minidist.exercises check ring_all_reduce
"""
import numpy as np


def ring_all_reduce(comm, x):
    """Sum of ``x`` over all ranks, on every rank, by the ring algorithm."""
    raise NotImplementedError
'''

HINTS = [
    "Work on a private copy: `chunks = np.array_split(x.reshape(-1).copy(), p)`; at the end "
    "`np.concatenate(chunks).reshape(x.shape)`.",
    "right = (r + 1) % p and left = (r - 1) % p never change; only the chunk indices move with the step s.",
    "Reduce-scatter step s: send chunks[(r - s) % p], receive into index (r - s - 1) % p and ADD.",
    "All-gather step s: send chunks[(r - s + 1) % p] (the one completed last), receive index (r - s) % p and "
    "REPLACE it.",
    "If chunk c on rank r misses one rank's data, your send and receive indices are off by one step.",
]


RULE = ("A chunk that misses some ranks' data means the chunk you send in a step and the one you add the "
        "received data into are off by one: in reduce-scatter step s rank r sends chunk (r - s) % p and adds "
        "into chunk (r - s - 1) % p. A chunk that counts ranks several times was added to again in the "
        "all-gather phase: there the received chunk REPLACES yours.")


def reference():
    class Reference:
        @staticmethod
        def ring_all_reduce(comm, x):
            return dist.all_reduce(comm, x, op="sum", algorithm="ring")
    return Reference


def _inputs(p, shape, seed, dtype=np.float64, integers=True):
    rng = np.random.default_rng(seed)
    if integers:
        return [rng.integers(-9, 10, size=shape).astype(dtype) for _ in range(p)]
    return [(rng.normal(size=shape) * 10).astype(dtype) for _ in range(p)]


def _result_check(sol, p, shape, seed, dtype=np.float64, integers=True):
    xs = _inputs(p, shape, seed, dtype, integers)
    outs, _ = run_on_ranks(sol.ring_all_reduce, xs)
    total = sum(x.astype(np.float64) for x in xs)
    n = int(np.prod(shape))
    what = f"sum on {p} ranks, {np.dtype(dtype)} array of shape {shape}"
    means = [o is not None and np.shape(o) == shape and np.allclose(o, total / p, rtol=1e-5) for o in outs]
    if all(means) and p > 1:
        raise Wrong(f"{what}: every rank returned the MEAN (sum / {p}); all-reduce here returns the SUM.")
    try:
        check_results(outs, [total] * p, p, what, chunk_bounds(n, p), dtype=dtype)
    except Wrong as exc:
        why = tagged_diagnosis(sol.ring_all_reduce, p, 2 * p, _chunk_of, RULE) if "keep x's dtype" not in str(exc) else ""
        raise Wrong(f"{exc}\n{why}".strip()) from None


def _chunk_of(out, r, c, p):
    a, b = chunk_bounds(out.size, p)[c]
    return out.reshape(-1)[a:b]


def _check(p, shape, seed):
    return lambda sol: _result_check(sol, p, shape, seed)


def _traffic(p, shape, seed, dtype=np.float64):
    def check(sol):
        _, sends = run_on_ranks(sol.ring_all_reduce, _inputs(p, shape, seed, dtype))
        check_ring_traffic(sends, p, int(np.prod(shape)), 2 * (p - 1), exact_chunk=False, name="ring all-reduce",
                           dtype=dtype, shape=shape)
    return check


def held_out_values(sol, rng):
    """Shapes 1-D to 4-D, float64 and float32, non-integer values, 2 to 6 ranks."""
    for i, shape in enumerate(shapes(rng, 4, 1, 4, size=(1, 5))):
        dtype = (np.float64, np.float32)[i % 2]
        _result_check(sol, int(rng.integers(2, 7)), shape, int(rng.integers(1 << 30)), dtype, integers=False)


def held_out_traffic(sol, rng):
    """An unflattened (a, b) float32 array with 2 to p - 1 rows, then a 3-D float64 one."""
    p = int(rng.integers(3, 6))
    _traffic(p, (int(rng.integers(2, p)), int(rng.integers(3, 7))), int(rng.integers(1 << 30)), np.float32)(sol)
    _traffic(p, tuple(int(v) for v in rng.integers(2, 4, size=3)), int(rng.integers(1 << 30)), np.float64)(sol)


CHECKS = [
    ("sum on 4 ranks, 16 elements", _check(4, (16,), 1)),
    ("sum on 2 ranks", _check(2, (6,), 2)),
    ("sum on 3 ranks, 10 elements (p does not divide n)", _check(3, (10,), 3)),
    ("sum on 5 ranks, a (3, 4) array", _check(5, (3, 4), 4)),
    ("held out: shapes 1-D to 4-D, float32 and float64, 2 to 6 ranks; x's shape kept, no narrower dtype", held_out_values),
    ("traffic: 2(p-1) messages of n/p elements to the right neighbour", _traffic(4, (16,), 7)),
    ("traffic with p = 3, n = 10", _traffic(3, (10,), 8)),
    ("held out traffic: a float32 2-D array and a 3-D array, counted in the array's own elements",
     held_out_traffic),
]
