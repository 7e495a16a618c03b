"""Exercise: one step of causal self-attention with a KV cache.

Reference: the attention of minidist/model.py with a cache — ``LayerKV.update`` of
minidist/inference.py appends the keys and values, then ``F.scaled_dot_product_attention``
(minidist/ops/attention.py) attends with its bottom-right-aligned causal mask.
"""
from __future__ import annotations

import math

import numpy as np

from .. import functional as F
from ..inference import LayerKV
from ..tensor import Tensor, no_grad
from .grading import Wrong, as_array, compare, diagnose, on_case

NAME = "kv_cache_decode_step"
TOPIC = "inference"
TITLE = "One decode step of attention with a KV cache"
NOTEBOOK = "11_inference_and_compression"
FUNCTIONS = ("attend_with_cache",)
FORBIDDEN_IMPORTS = ("minidist.inference", "minidist.model", "minidist.functional", "minidist.ops", "torch", "jax")

STUB = '''"""One step of causal self-attention with a KV cache (Pope et al. 2022, "Efficiently
Scaling Transformer Inference", §2; Hugging Face's past_key_values).

A GPT generates one token at a time. The keys and values of the positions it has already
seen never change, so it keeps them (the KV cache) and each step computes the query, key
and value of the NEW positions only. Shapes (B sequences, nh heads, hs numbers per head):

* k_cache, v_cache: (B, nh, L, hs) — the keys and values of the L positions seen so far
  (L may be 0: nothing cached yet);
* q, k, v: (B, nh, T, hs) — the new positions' queries, keys and values (T = 1 in a decode
  step; a prefill is the same call with an empty cache and T = the prompt's length).

Write ``attend_with_cache(q, k, v, k_cache, v_cache)`` returning ``(y, k_cache, v_cache)``:

1. the new caches: the old keys (values) followed by the new ones along the positions
   axis (axis 2), shape (B, nh, L + T, hs);
2. for every sequence and head, the scores S = Q Kᵀ / √hs against ALL L + T keys:
   (T, L + T);
3. the causal mask: new position i is position L + i of the sequence; it may see keys
   0 … L + i (itself included), not the ones after it: set those scores to −inf;
4. P = softmax(S) over the keys, y = P V: (B, nh, T, hs).

Return new arrays (do not modify the inputs). Use NumPy only: not allowed are minidist's
own attention and cache (minidist.inference, minidist.model, minidist.functional,
minidist.ops), torch and jax. The grader also tries shapes of its own.
"""
import numpy as np


def attend_with_cache(q, k, v, k_cache, v_cache):
    """(y, k_cache, v_cache) after attending the T new positions to the L + T known ones."""
    raise NotImplementedError
'''

HINTS = [
    "Start with the caches: np.concatenate([k_cache, k], axis=2) — positions are axis 2, heads axis 1.",
    "Scores for every sequence and head at once: q @ np.swapaxes(K, -1, -2) / np.sqrt(hs), shape (B, nh, T, L + T).",
    "The mask: query i (row) may see key j (column) when j <= L + i: np.triu(np.ones((T, L + T), bool), k=L + 1) "
    "marks the forbidden ones. With T = 1 nothing is masked: the newest token sees everything.",
    "Softmax over the last axis (the keys); subtract the row maximum first so exp never overflows.",
]


def reference():
    class Reference:
        @staticmethod
        def attend_with_cache(q, k, v, k_cache, v_cache):
            layer = LayerKV()
            with no_grad():
                if k_cache.shape[2]:
                    layer.update(Tensor(k_cache), Tensor(v_cache))
                K, V = layer.update(Tensor(k), Tensor(v))                # (B, nh, L + T, hs)
                y = F.scaled_dot_product_attention(Tensor(q), K, V, is_causal=True)
            return y.data, K.data, V.data
    return Reference


# -- typical mistakes, as functions of (q, k, v, k_cache, v_cache) -> y --------------------------
def _attend(q, K, V, scale, mask):
    """softmax(q Kᵀ · scale + mask) V, the softmax over the keys."""
    s = q @ np.swapaxes(K, -1, -2) * scale + mask                   # (B, nh, T, Tk)
    p = np.exp(s - s.max(-1, keepdims=True))
    return p / p.sum(-1, keepdims=True) @ V


def _mask(T, Tk, offset):
    """0 where query i may see key j <= offset + i, −inf elsewhere: (T, Tk)."""
    return np.where(np.arange(Tk)[None, :] <= offset + np.arange(T)[:, None], 0.0, -np.inf)


def _mistake(cache="both", scale="sqrt", mask="bottom_right", softmax_axis=-1):
    def y(q, k, v, kc, vc):
        K, V = {"both": (np.concatenate([kc, k], 2), np.concatenate([vc, v], 2)),
                "old_only": (kc, vc), "new_only": (k, v)}[cache]
        T, Tk, hs = q.shape[2], K.shape[2], q.shape[3]
        m = {"bottom_right": _mask(T, Tk, Tk - T), "top_left": _mask(T, Tk, 0), "none": np.zeros((T, Tk))}[mask]
        c = {"sqrt": 1 / math.sqrt(hs), "none": 1.0, "hs": 1.0 / hs}[scale]
        if softmax_axis == -1:
            return _attend(q, K, V, c, m)
        s = q @ np.swapaxes(K, -1, -2) * c + m
        p = np.exp(s - np.nanmax(np.where(np.isinf(s), np.nan, s), axis=-2, keepdims=True))
        return p / p.sum(-2, keepdims=True) @ V
    return y


Y_MISTAKES = [
    (_mistake(mask="top_left"),
     "your mask is aligned at the top left: new query i sees keys 0 … i, as torch's is_causal does when there are "
     "fewer queries than keys. The new positions are the LAST T of the L + T: query i sees keys 0 … L + i"),
    (_mistake(mask="none"),
     "your new positions see the ones after them: mask the keys j > L + i with −inf before the softmax "
     "(with T > 1 new positions the mask matters)"),
    (_mistake(cache="old_only"),
     "your new positions attend only to the cached ones: append their own keys and values first (a token "
     "sees itself)"),
    (_mistake(cache="new_only"),
     "your new positions ignore the cache: they must attend to the L cached positions too, that is what it is for"),
    (_mistake(scale="none"),
     "your scores are not scaled: divide Q Kᵀ by √hs"),
    (_mistake(scale="hs"),
     "you divide the scores by hs; divide by √hs"),
    (_mistake(softmax_axis=-2),
     "your softmax normalises over the queries; it must be over the keys (the last axis of the scores)"),
]


def _case(seed, B, nh, L, T, hs, dtype=np.float64):
    rng = np.random.default_rng(seed)
    q, k, v = (rng.normal(size=(B, nh, T, hs)).astype(dtype) for _ in range(3))
    kc, vc = (rng.normal(size=(B, nh, L, hs)).astype(dtype) for _ in range(2))
    return q, k, v, kc, vc


def _run(sol, args, what):
    copies = [a.copy() for a in args]
    out = sol.attend_with_cache(*copies)
    if not isinstance(out, (tuple, list)) or len(out) != 3:
        raise Wrong(f"{what}: return the tuple (y, k_cache, v_cache); you returned {type(out).__name__}"
                    + (f" of length {len(out)}" if isinstance(out, (tuple, list)) else ""))
    if any(not np.array_equal(a, c) for a, c in zip(args, copies)):
        names = [n for n, a, c in zip(("q", "k", "v", "k_cache", "v_cache"), args, copies) if not np.array_equal(a, c)]
        raise Wrong(f"{what}: your function changed its input {', '.join(names)}; return new arrays instead")
    return [as_array(o, n) for o, n in zip(out, ("y", "k_cache", "v_cache"))]


def _describe(args):
    q, kc = args[0], args[3]
    B, nh, T, hs = q.shape
    return f"B={B}, nh={nh}, L={kc.shape[2]} cached, T={T} new, hs={hs}"


def _check_caches(got, args, what):
    q, k, v, kc, vc = args
    for name, mine, old, new in (("k_cache", got[1], kc, k), ("v_cache", got[2], vc, v)):
        want = np.concatenate([old, new], axis=2)
        if mine.shape != want.shape:
            hint = ""
            if mine.shape == np.concatenate([old, new], axis=1).shape and mine.shape != want.shape:
                hint = " — you concatenated along axis 1 (the heads); the positions are axis 2"
            elif mine.shape == old.shape:
                hint = " — the new positions were not appended"
            raise Wrong(f"{what}: the returned {name} has shape {mine.shape}, expected {want.shape}{hint}")
        if np.allclose(mine, np.concatenate([new, old], axis=2)) and not np.allclose(mine, want):
            raise Wrong(f"{what}: your {name} holds the new positions BEFORE the cached ones; append them after "
                        f"(position order: the cache's L, then the T new)")
        compare(mine, want, f"{what}: {name}", rtol=0, atol=0, hint="the old entries, then the new ones, unchanged")


def _check_y(got, args, what, rtol=1e-9, atol=1e-12):
    want = reference().attend_with_cache(*args)[0]
    if got[0].shape != want.shape:
        raise Wrong(f"{what}: y has shape {got[0].shape}, expected {want.shape} (B, nh, T, hs): one output per "
                    f"new position")
    try:
        compare(got[0], want, f"{what}: y", rtol=rtol, atol=atol)
    except Wrong as exc:
        wide = [a.astype(np.float64) for a in args]
        why = diagnose(got[0], Y_MISTAKES, *wide, rtol=max(rtol, 1e-6), atol=max(atol, 1e-9))
        raise Wrong(f"{exc}" + (f"\nY{why[1:]}." if why else "")) from None


def _check(seed, B, nh, L, T, hs, rule=""):
    def check(sol):
        args = _case(seed, B, nh, L, T, hs)
        what = _describe(args)
        got = _run(sol, args, what)
        if L == 0 and T == 1 and got[0].shape == args[2].shape and not np.allclose(got[0], args[2]):
            raise Wrong(f"{what}: with nothing cached the one new position sees only itself, so y must equal v; "
                        f"yours differs by up to {np.abs(got[0] - args[2]).max():.3g}{rule}")
        _check_y(got, args, what)
        _check_caches(got, args, what)
    return check


def held_out(sol, rng):
    """Shapes the statement does not show, drawn from the grader's seed: one head or several,
    one sequence or several, caches of 0 to 11 positions, 1 to 5 new ones, float32 and float64."""
    for i in range(6):
        B, nh, hs = int(rng.integers(1, 4)), int(rng.integers(1, 5)), int(rng.choice([1, 3, 8, 16]))
        L, T = (0, 1) if i == 0 else (int(rng.integers(0, 12)), int(rng.choice([1, 1, 2, 5])))
        dtype = (np.float64, np.float32)[i % 2]
        args = _case(int(rng.integers(1 << 30)), B, nh, L, T, hs, dtype)
        what = f"{np.dtype(dtype)}, {_describe(args)}"
        with on_case(sol, what, "the statement promises any B, nh, hs and caches of any length, L = 0 included"):
            got = _run(sol, args, what)
        tol = {"rtol": 1e-4, "atol": 1e-5} if dtype == np.float32 else {"rtol": 1e-9, "atol": 1e-12}
        _check_y(got, args, what, **tol)
        _check_caches(got, args, what)


CHECKS = [
    ("the first token: nothing cached (L = 0, T = 1), so y = v", _check(1, 2, 2, 0, 1, 4)),
    ("a decode step: one new position after L = 5 cached", _check(2, 2, 3, 5, 1, 4)),
    ("a prefill: T = 4 new positions, empty cache (the causal mask)", _check(3, 1, 2, 0, 4, 4)),
    ("a chunk: T = 3 new positions after L = 4 cached (the mask's alignment)", _check(4, 2, 2, 4, 3, 8)),
    ("held out: other shapes, float32 and float64", held_out),
]
