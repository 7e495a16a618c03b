"""Exercise: ZeRO-2 gradient partitioning — which rank owns which slice of each bucket, and the
averaged gradient shard it keeps. Reference: ``Bucket.shard_range`` (minidist/parallel/data/buckets.py)
and the reduce-scatter of ZeRO-2 (minidist/parallel/data/zero2.py).
"""
from __future__ import annotations

import numpy as np

from .. import distributed as dist
from ..model import GPT, GPTConfig
from ..parallel.data.buckets import make_buckets
from .grading import Wrong, as_array
from .ranks import RANK_TIMEOUT

NAME = "zero2_gradient_partition"
TOPIC = "zero"
TITLE = "ZeRO-2: the slice of each bucket a rank owns, and its averaged gradient shard"
NOTEBOOK = "03_data_parallel_and_zero"
FUNCTIONS = ("owned_range", "gradient_shard")
FORBIDDEN = ("minidist.parallel",)       # ZeRO's own buckets and shard ranges (dist.reduce_scatter is allowed)

STUB = '''"""ZeRO stage 2 (Rajbhandari et al. 2020, §5.2): every rank keeps only ITS slice of the gradients.

Gradients are packed into buckets: flat buffers of n elements. ZeRO cuts each bucket into
p = world_size equal chunks of c = ceil(n / p) elements — the bucket is padded with zeros
to p * c — and rank r owns elements [r * c, (r + 1) * c) of the padded bucket.

1. ``owned_range(numel, world_size, rank)`` -> ``(start, stop)``: the slice of a bucket of
   ``numel`` elements that ``rank`` owns (stop may run past numel into the padding).

2. ``gradient_shard(comm, flat_grad)``: ``flat_grad`` is this rank's gradient of one bucket
   (1-D, n elements), computed on this rank's own micro-batch. Return this rank's slice of
   the gradient AVERAGED over the data-parallel ranks: c elements, padding zeros included.
   That average is exactly the gradient of the whole global batch, which is why ZeRO-2
   trains like one rank. You may call ``dist.reduce_scatter(comm, x)`` (from
   ``minidist import distributed as dist``): it returns rank r's chunk of the SUM,
   zero-padded to c elements.

The grader builds the buckets of a real GPT with minidist's make_buckets, computes every
rank's gradient on its micro-batch, runs your gradient_shard on dist.spawn ranks and
compares with the full-batch gradient of one rank, also for bucket sizes and rank counts of
its own, drawn from the seed it prints.

Not allowed (the grader looks at what your code calls or imports): minidist.parallel
(ZeRO's own buckets and shard ranges). dist.reduce_scatter is allowed; helpers of your own
may have any name.
"""
from minidist import distributed as dist


def owned_range(numel, world_size, rank):
    raise NotImplementedError


def gradient_shard(comm, flat_grad):
    raise NotImplementedError
'''

HINTS = [
    "c = -(-numel // world_size) is ceil(numel / world_size) in integers.",
    "reduce_scatter sums; ZeRO keeps the mean gradient: divide by comm.size.",
    "Padding rule: the last rank's chunk may be partly or wholly zeros; it still has c elements.",
]


def reference():
    class Reference:
        @staticmethod
        def owned_range(numel, world_size, rank):
            bucket = make_buckets([np.zeros(numel)], numel, world_size)[0]
            return bucket.shard_range(rank)

        @staticmethod
        def gradient_shard(comm, flat_grad):
            return dist.reduce_scatter(comm, flat_grad, op="mean")
    return Reference


CFG = GPTConfig(block_size=8, vocab_size=13, n_layer=1, n_head=2, n_embd=8)


def check_ranges(sol, cases=((12, 4), (10, 3), (7, 5), (1, 2), (1000, 7))):
    for numel, p in cases:
        c = -(-numel // p)
        for r in range(p):
            got = sol.owned_range(numel, p, r)
            try:
                got = tuple(int(v) for v in got)
            except (TypeError, ValueError):
                raise Wrong(f"owned_range must return (start, stop), got {got!r:.60}") from None
            want = (r * c, (r + 1) * c)
            if got != want:
                why = (f"chunks have c = ceil({numel}/{p}) = {c} elements: the bucket is padded to {p * c}"
                       if numel % p else f"chunks have c = {numel}/{p} = {c} elements")
                if got[1] - got[0] == numel // p and numel % p:
                    why += f"; you used numel // p = {numel // p}, which leaves elements no rank owns"
                elif got == (want[0], want[1] - 1):
                    why += "; your stop is one short: stop is EXCLUSIVE, as in a Python slice bucket[start:stop]"
                elif got == (want[0] + c, want[1] + c) or got == (want[0] + 1, want[1] + 1):
                    why += "; yours is one off the other way: ranks count from 0, so rank 0 starts at element 0"
                raise Wrong(f"bucket of {numel} elements on {p} ranks: rank {r} owns [{want[0]}, {want[1]}), "
                            f"you said [{got[0]}, {got[1]}) — {why}.")


def _rank_grads(p, micro):
    """Each rank's flat gradient per bucket on its micro-batch, and the full-batch one."""
    rng = np.random.default_rng(p)
    x = rng.integers(0, CFG.vocab_size, (p * micro, CFG.block_size))
    y = np.roll(x, -1, axis=1)

    def grads(rows):
        model = GPT(CFG, seed=0, dtype=np.float64)
        model(x[rows], y[rows])[1].backward()
        buckets = make_buckets(list(model.parameters()), 300, p)     # several buckets, sizes not multiples of p
        return buckets, [b.flat_grads()[:b.numel] for b in buckets]

    per_rank = [grads(slice(r * micro, (r + 1) * micro))[1] for r in range(p)]
    buckets, full = grads(slice(0, p * micro))
    return buckets, per_rank, full


def _check_shards(sol, p):
    buckets, per_rank, full = _rank_grads(p, 2)

    def main(comm):
        return [sol.gradient_shard(comm, g.copy()) for g in per_rank[comm.rank]]

    outs = dist.spawn(main, p, timeout=RANK_TIMEOUT)
    for r in range(p):
        for b, got in zip(buckets, outs[r]):
            got = as_array(got, f"rank {r}, bucket {b.index}").reshape(-1)
            lo, hi = b.shard_range(r)
            padded = np.zeros(b.padded)
            padded[:b.numel] = full[b.index]
            want = padded[lo:hi]
            label = f"{p} ranks: rank {r}, bucket {b.index} ({b.numel} elements, c = {b.chunk})"
            if got.size != want.size:
                whole = " — that is the whole bucket: keep only your slice" if got.size in (b.numel, b.padded) else ""
                raise Wrong(f"{label}: your shard has {got.size} elements, expected c = {b.chunk}{whole}.")
            if np.allclose(got, want, rtol=1e-9, atol=1e-12):
                continue
            if np.allclose(got, p * want, rtol=1e-9, atol=1e-12):
                raise Wrong(f"{label}: your shard is {p}× the full-batch gradient: it is the SUM over ranks. "
                            f"ZeRO keeps the MEAN (divide by comm.size), which equals one rank's gradient on the "
                            f"whole global batch.")
            i = int(np.flatnonzero(~np.isclose(got, want, rtol=1e-9, atol=1e-12))[0])
            raise Wrong(f"{label}: element {lo + i} of the padded bucket: expected {want[i]:.10g} (the full-batch "
                        f"gradient{', padding' if lo + i >= b.numel else ''}), got {got[i]:.10g}.")


def held_out_ranges(sol, rng):
    """Bucket sizes 1 to 10**6 on 2 to 64 ranks, most not multiples."""
    check_ranges(sol, [(int(10 ** rng.uniform(0, 6)), int(rng.integers(2, 65))) for _ in range(20)])


CHECKS = [
    ("owned_range: rank r owns [r*c, (r+1)*c) of the padded bucket", check_ranges),
    ("gradient shards on 2 ranks equal the full-batch gradient", lambda sol: _check_shards(sol, 2)),
    ("gradient shards on 3 ranks (buckets padded to a multiple of 3)", lambda sol: _check_shards(sol, 3)),
    ("held out: owned_range for bucket sizes and rank counts of the grader's", held_out_ranges),
    ("held out: gradient shards on 4 or 5 ranks", lambda sol, rng: _check_shards(sol, int(rng.integers(4, 6)))),
]
