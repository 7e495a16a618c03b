"""Exercise: the online-softmax merge of two attention blocks — the step ring attention repeats.

Reference: :func:`minidist.parallel.context.ring.merge_blocks` (the rule
:func:`~minidist.parallel.context.ring.ring_attention` applies block after block, as running
max, sum and output).
"""
from __future__ import annotations

import numpy as np

from ..parallel.context.ring import block_attention, merge_blocks
from .grading import Wrong, as_array, compare, diagnose, on_case

NAME = "online_softmax_merge"
TOPIC = "context parallel"
TITLE = "Merge two blocks of attention with the online softmax"
NOTEBOOK = "13_long_context"
FUNCTIONS = ("merge",)
FORBIDDEN_IMPORTS = ("minidist.parallel", "minidist.functional", "minidist.ops", "scipy", "torch", "jax")

STUB = '''"""The online-softmax merge (Milakov & Gimelshein 2018; Dao et al. 2022, FlashAttention §3.1):
the step ring attention (Liu et al. 2023) repeats once per key block that arrives.

A query row attends to keys that arrive in blocks. For one block alone it computes its scores
s_j = q·k_j/√d, their log-sum-exp  lse = log Σ_j exp(s_j)  and the output normalised over
that block only,  out = Σ_j exp(s_j − lse) · v_j.  For two blocks of the SAME queries over
DIFFERENT keys you get (out1, lse1) and (out2, lse2). Shapes: out (..., T, hs), lse (..., T)
— any leading axes (batch, heads), T queries, hs numbers per head.

Write ``merge(out1, lse1, out2, lse2)`` returning ``(out, lse)``: the attention output of the
queries over the keys of BOTH blocks and its log-sum-exp, exactly as if all the keys had come
in one block:

1. lse = log(exp(lse1) + exp(lse2)), computed so that it never overflows (scores of 1000 are
   fine: subtract the larger of the two first);
2. out = w1·out1 + w2·out2, where w_i = exp(lse_i − lse) is block i's share of the whole
   softmax sum (one weight per query row).

A block a query cannot see at all (every key masked, as a future block under a causal mask)
has lse = −inf and out = 0: merging it must change nothing. Return new arrays (do not modify
the inputs). Use NumPy only: not allowed are minidist's own attention (minidist.parallel,
minidist.functional, minidist.ops), scipy, torch and jax. The grader also tries shapes of
its own, float32 and float64.
"""
import numpy as np


def merge(out1, lse1, out2, lse2):
    """(out, lse) over the keys of both blocks."""
    raise NotImplementedError
'''

HINTS = [
    "Each output is normalised over its own block: out_i = (Σ_block exp(s − lse_i)·v). Multiply by exp(lse_i) and "
    "you have the unnormalised sum; add the two; divide by the total exp(lse).",
    "np.logaddexp(a, b) is log(exp(a) + exp(b)) without overflow; or m = np.maximum(a, b), "
    "lse = m + np.log(np.exp(a − m) + np.exp(b − m)).",
    "The weights have shape (..., T) and out has (..., T, hs): give the weights a last axis of length 1 "
    "(w[..., None]) so that each query row's weight multiplies that row.",
]


def reference():
    class Reference:
        @staticmethod
        def merge(out1, lse1, out2, lse2):
            return merge_blocks(out1, lse1, out2, lse2)
    return Reference


# -- typical mistakes, as functions of (out1, lse1, out2, lse2) -> (out, lse) ------------------
def _average(o1, l1, o2, l2):
    return (o1 + o2) / 2, np.logaddexp(l1, l2)


def _lse_max(o1, l1, o2, l2):
    lse = np.maximum(l1, l2)
    return np.exp(l1 - lse)[..., None] * o1 + np.exp(l2 - lse)[..., None] * o2, lse


def _weights_by_lse(o1, l1, o2, l2):
    w1 = l1 / (l1 + l2)
    return w1[..., None] * o1 + (1 - w1)[..., None] * o2, np.logaddexp(l1, l2)


def _unnormalised(o1, l1, o2, l2):
    return np.exp(l1)[..., None] * o1 + np.exp(l2)[..., None] * o2, np.logaddexp(l1, l2)


OUT_MISTAKES = [
    (_average, "you averaged the two outputs: each block must count by its share of the softmax sum, "
               "w_i = exp(lse_i − lse), not ½ each (a block with larger scores weighs more)"),
    (_lse_max, "your weights do not add up to 1: you normalised with max(lse1, lse2) instead of the merged "
               "lse = log(exp(lse1) + exp(lse2))"),
    (_weights_by_lse, "you weighted the blocks by lse_i / (lse1 + lse2); the weights are exp(lse_i − lse)"),
    (_unnormalised, "you multiplied each output by exp(lse_i) but never divided by the total exp(lse)"),
]
LSE_MISTAKES = [
    (lambda o1, l1, o2, l2: np.maximum(l1, l2),
     "your lse is max(lse1, lse2); the merged log-sum-exp is log(exp(lse1) + exp(lse2)), larger than both"),
    (lambda o1, l1, o2, l2: l1 + l2,
     "your lse is lse1 + lse2: that is the log of the PRODUCT of the sums; add the sums: log(e^lse1 + e^lse2)"),
]


def _blocks(seed, lead, T, hs, split, dtype=np.float64, shift=0.0):
    """Two key blocks of one query set: (out1, lse1, out2, lse2) and the whole attention (out, lse).
    ``shift`` is added to every score of the first block (scores near 1000 test for overflow)."""
    rng = np.random.default_rng(seed)
    n = split[0] + split[1]
    q = rng.normal(size=(*lead, T, hs))
    k, v = rng.normal(size=(*lead, n, hs)), rng.normal(size=(*lead, n, hs))
    mask = np.zeros((T, n))
    mask[:, :split[0]] = shift
    a = block_attention(q, k[..., :split[0], :], v[..., :split[0], :], mask[:, :split[0]])
    b = block_attention(q, k[..., split[0]:, :], v[..., split[0]:, :], mask[:, split[0]:])
    whole = block_attention(q, k, v, mask)
    return [x.astype(dtype) for x in (*a, *b)], whole


def _call(sol, args, what):
    copies = [x.copy() for x in args]
    out = sol.merge(*copies)
    if not isinstance(out, (tuple, list)) or len(out) != 2:
        raise Wrong(f"{what}: return the tuple (out, lse); you returned {type(out).__name__}"
                    + (f" of length {len(out)}" if isinstance(out, (tuple, list)) else ""))
    if any(not np.array_equal(x, c, equal_nan=True) for x, c in zip(args, copies)):
        raise Wrong(f"{what}: your function changed its inputs; return new arrays instead")
    return as_array(out[0], "out"), as_array(out[1], "lse")


def _describe(args, split):
    o1 = args[0]
    return (f"{o1.dtype}, out {o1.shape} (T = {o1.shape[-2]} queries, hs = {o1.shape[-1]}), blocks of {split[0]} "
            f"and {split[1]} keys")


def _judge(got, args, want, what, rtol, atol):
    out, lse = got
    wide = [x.astype(np.float64) for x in args]
    try:
        compare(lse, want[1], f"{what}: lse", rtol=rtol, atol=atol)
    except Wrong as exc:
        why = diagnose(lse, LSE_MISTAKES, *wide, rtol=max(rtol, 1e-6), atol=max(atol, 1e-9))
        raise Wrong(f"{exc}" + (f"\nY{why[1:]}." if why else "")) from None
    if out.shape != want[0].shape and out.shape[:-1] == want[0].shape[:-1] + (want[0].shape[-1],):
        raise Wrong(f"{what}: out has shape {out.shape}, expected {want[0].shape}: your weights (…, T) were "
                    f"broadcast against out (…, T, hs) along the wrong axis; use w[..., None]")
    try:
        compare(out, want[0], f"{what}: out", rtol=rtol, atol=atol)
    except Wrong as exc:
        why = diagnose(out, [(lambda *a, f=f: f(*a)[0], m) for f, m in OUT_MISTAKES], *wide,
                       rtol=max(rtol, 1e-6), atol=max(atol, 1e-9))
        if not why and out.shape[-1] == out.shape[-2]:
            w = np.exp(wide[1] - want[1])
            wrong_axis = w[..., None, :] * wide[0] + (1 - w)[..., None, :] * wide[2]
            if np.allclose(out, wrong_axis, rtol=1e-6, atol=1e-9):
                why = ("your weights (one per query row, shape (…, T)) multiply the COLUMNS of out (…, T, hs): "
                       "with T = hs NumPy broadcasts them along the wrong axis; use w[..., None]")
        raise Wrong(f"{exc}" + (f"\nY{why[1:]}." if why else "")) from None


def _check(seed, lead, T, hs, split, shift=0.0, rule=""):
    def check(sol):
        args, want = _blocks(seed, lead, T, hs, split, shift=shift)
        what = _describe(args, split) + rule
        got = _call(sol, args, what)
        if not (np.isfinite(got[0]).all() and np.isfinite(got[1]).all()):
            raise Wrong(f"{what}: your result holds inf or NaN — exp of scores around {shift:g} overflows; "
                        f"subtract the larger lse before exp (np.logaddexp does)" if shift else
                        f"{what}: your result holds inf or NaN")
        _judge(got, args, want, what, 1e-9, 1e-12)
    return check


def check_invisible_block(sol):
    """A block no query can see: lse = −inf, out = 0. The merge is the other block, unchanged."""
    args, want = _blocks(11, (2,), 4, 3, (3, 2))
    o1, l1 = args[0], args[1]
    empty = (np.zeros_like(o1), np.full_like(l1, -np.inf))
    what = "a block no query can see (lse = −inf, out = 0)"
    for order, call in (("second", (o1, l1, *empty)), ("first", (*empty, o1, l1))):
        with np.errstate(all="ignore"):
            out, lse = _call(sol, call, f"{what} as the {order} block")
        if not (np.isfinite(out).all() and np.isfinite(lse).all()):
            raise Wrong(f"{what} as the {order} block: your result holds inf or NaN; exp(−inf − lse) is 0, "
                        f"so this block's weight is 0 — avoid −inf − (−inf)")
        compare(lse, l1, f"{what} as the {order} block: lse", rtol=1e-12, atol=1e-12,
                hint="nothing was added: lse must be the other block's")
        compare(out, o1, f"{what} as the {order} block: out", rtol=1e-12, atol=1e-12,
                hint="nothing was added: out must be the other block's")


def check_order(sol):
    args, _ = _blocks(12, (3,), 5, 4, (2, 6))
    a = _call(sol, args, "merge(block 1, block 2)")
    b = _call(sol, args[2:] + args[:2], "merge(block 2, block 1)")
    compare(b[0], a[0], "merge(block 2, block 1) against merge(block 1, block 2): out", rtol=1e-12, atol=1e-12,
            hint="the blocks' order must not matter: the softmax over all keys is the same")


def held_out(sol, rng):
    """Shapes the statement does not show: no leading axis or several, one query or many,
    T equal to hs, uneven blocks, float32 and float64, one block's scores far larger."""
    for i in range(6):
        lead = [(), (2,), (2, 3)][i % 3]
        T = int(rng.integers(1, 6))
        hs = T if i == 2 else int(rng.choice([1, 2, 4, 8]))
        split = (int(rng.integers(1, 6)), int(rng.integers(1, 6)))
        dtype = (np.float64, np.float32)[i % 2]
        shift = float(rng.choice([0.0, 0.0, 8.0]))
        args, want = _blocks(int(rng.integers(1 << 30)), lead, T, hs, split, dtype, shift)
        what = "held out: " + _describe(args, split)
        with on_case(sol, what, "the statement promises any leading axes, any T and hs, float32 and float64"):
            got = _call(sol, args, what)
        tol = (1e-4, 1e-5) if dtype == np.float32 else (1e-9, 1e-12)
        _judge(got, args, want, what, *tol)


CHECKS = [
    ("two halves of the keys: the merge is attention over all of them", _check(1, (2, 2), 4, 3, (4, 4))),
    ("uneven blocks, one of a single key", _check(2, (1,), 3, 5, (1, 6))),
    ("one block's scores near 1000: no overflow", _check(3, (2,), 3, 2, (3, 3), shift=1000.0)),
    ("a block no query can see changes nothing", check_invisible_block),
    ("the order of the blocks does not matter", check_order),
    ("held out: other shapes, float32 and float64", held_out),
]
