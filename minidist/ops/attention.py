"""Causal scaled dot-product attention (Vaswani et al. 2017), fused forward and backward.

For one head: S = Q Kᵀ / √d, causal mask (position t sees only positions ≤ t),
P = softmax(S), Y = P V. The (T × T) probabilities P are what attention saves for
backward — the 5·a·s²·b term of Korthikanti et al. 2022's activation formula.
With a KV cache (generation, :mod:`minidist.inference`) there are fewer queries than keys:
the Tq queries are the LAST Tq of the Tk positions (the cache holds the Tk − Tq before
them), so the causal mask is aligned at the bottom right — query i sees keys ≤ Tk − Tq + i,
and one decoded token sees every key (PyTorch's ``causal_lower_right``; its plain
``is_causal`` aligns at the upper left, which is wrong for a cache).
FLOPs: 2·Tq·Tk·d for Q Kᵀ and again for P V, per head and sequence; backward twice that.
Under ``autocast`` the operands of both products (Q, K, then P, V) are rounded to the
low-precision format; the softmax itself runs in fp32, as fused attention kernels do.

Speed (NumPy has no fused kernel): the softmax and its backward walk the (T × T) scores
one sequence at a time, so each pass works on an L2-cache-sized block (nh·T·T floats)
instead of streaming the whole (B, nh, T, T) tensor from memory six times; everything is
done in place. Outputs and input gradients are laid out (B, T, nh, hs) in memory, so the
model's ``transpose(1, 2).reshape(B, T, C)`` around attention is a view, not a copy.
``attention_reference`` below is the plain version, kept to read and to test against.
"""
from __future__ import annotations

import functools
import math

import numpy as np

from ..autocast import cast_input
from ..tensor import Tensor, as_tensor, make_result
from .linalg import _charge

def causal_mask(T: int, dtype, transposed: bool = False, keys: int | None = None) -> np.ndarray:
    """(T, keys) additive mask (``keys`` defaults to T): 0 where query i may see key j, i.e.
    j ≤ keys − T + i (bottom-right aligned), -inf elsewhere (cached, read-only).

    ``transposed=True``: the same mask laid out (keys, queries), stored contiguous.
    """
    return _causal_mask(int(T), int(T if keys is None else keys), np.dtype(dtype), bool(transposed))


# Shared by every rank of the in-process backend (threads of one process): lru_cache is
# thread-safe, maxsize bounds it (a few sequence lengths × dtypes × layouts are ever in use;
# each (T, T) mask is T² elements), and the masks are read-only so no rank can change another's.
@functools.lru_cache(maxsize=16)
def _causal_mask(T: int, keys: int, dtype: np.dtype, transposed: bool) -> np.ndarray:
    mask = np.triu(np.full((T, keys), -np.inf, dtype=dtype), k=1 + keys - T)
    mask = np.ascontiguousarray(mask.T) if transposed else mask
    mask.setflags(write=False)
    return mask


def _empty_bthd(B, nh, T, hs, dtype) -> np.ndarray:
    """An uninitialised (B, nh, T, hs) array stored as (B, T, nh, hs): heads side by side."""
    return np.empty((B, T, nh, hs), dtype=dtype).swapaxes(1, 2)


def scaled_dot_product_attention(q, k, v, is_causal: bool = True, dropout_p: float = 0.0,
                                 rng: np.random.Generator | None = None) -> Tensor:
    """q: (B, nh, T, hs), k, v: (B, nh, Tk, hs) → (B, nh, T, hs). Causal by default (GPT);
    Tk = T in training, Tk > T with a KV cache (the queries are the last T positions)."""
    q, k, v = as_tensor(q), as_tensor(k), as_tensor(v)
    if k.shape != v.shape or q.ndim != 4 or k.ndim != 4 or q.shape[:2] + q.shape[3:] != k.shape[:2] + k.shape[3:] \
            or (is_causal and k.shape[2] < q.shape[2]):
        raise ValueError(f"attention expects q (B, nh, T, hs) and k, v of one shape (B, nh, Tk, hs), Tk >= T when "
                         f"causal; got {q.shape}, {k.shape}, {v.shape}")
    B, nh, T, hs = q.shape
    Tk = k.shape[2]                                           # keys: T, or the cache's positions and these
    dt = q.dtype
    scale = np.asarray(1.0 / math.sqrt(hs), dtype=dt)
    qd, kd, vd = cast_input(q.data), cast_input(k.data), cast_input(v.data)   # autocast
    qs = qd * scale                                           # scale Q (T·hs) rather than S (T·Tk)
    ones = np.ones((1, Tk), dtype=dt)                         # ones @ X sums X over its rows
    # The scores are built transposed, Sᵀ = K Qᵀ (keys down, queries across): the softmax
    # over keys then reduces over rows, which NumPy vectorises, rather than over 128-long
    # rows one at a time. p below is the (B, nh, T, Tk) view of that buffer.
    mask_t = causal_mask(T, dt, transposed=True, keys=Tk) if is_causal else None    # (keys, queries)
    p_t = np.empty((B, nh, Tk, T), dtype=dt)                  # (B, nh, keys, queries)
    for b in range(B):                                        # one sequence: (nh, Tk, T) fits in L2
        s = np.matmul(kd[b], np.swapaxes(qs[b], -1, -2), out=p_t[b])    # (nh, keys, queries)
        if mask_t is not None:
            s += mask_t
        s -= s.max(axis=-2, keepdims=True)
        np.exp(s, out=s)
        s *= 1.0 / (ones @ s)                                 # divide by Σ over keys: (nh, 1, queries)
    del qs
    p = cast_input(np.swapaxes(p_t, -1, -2))                  # (B, nh, T, Tk) probabilities, operand of P V
    keep = None
    inv_keep = np.asarray(1.0 / (1.0 - dropout_p), dtype=dt)   # inverted dropout: E[P∘mask/(1-p)] = P
    if dropout_p > 0.0:
        rng = rng if rng is not None else np.random.default_rng()
        keep = rng.random(p.shape) >= dropout_p               # (B, nh, T, Tk) bool: the 1-byte mask
        pd = np.multiply(p, keep, dtype=dt)
        pd *= inv_keep                                        # P∘mask/(1-p): backward's operand of dV
    else:
        pd = p
    y = np.matmul(pd, vd, out=_empty_bthd(B, nh, T, hs, dt))   # (B, nh, T, hs)
    mm = 2 * B * nh * T * Tk * hs                             # one of the two products

    def backward(g, needs):
        _charge("attention.backward", 4 * mm)
        dq = _empty_bthd(B, nh, T, hs, g.dtype)
        dk, dv = (_empty_bthd(B, nh, Tk, hs, g.dtype) for _ in range(2))
        ds_t = np.empty((nh, Tk, T), dtype=g.dtype)           # (nh, keys, queries), reused per sequence
        tmp = np.empty_like(ds_t)
        for b in range(B):
            pd_t, p_bt = np.swapaxes(pd[b], -1, -2), np.swapaxes(p[b], -1, -2)   # (nh, keys, queries)
            np.matmul(pd_t, g[b], out=dv[b])                                    # dV = Pᵀ dY: (nh, Tk, hs)
            np.matmul(vd[b], np.swapaxes(g[b], -1, -2), out=ds_t)              # dPᵀ = V dYᵀ
            if keep is not None:                                                # dropout backward
                ds_t *= np.swapaxes(keep[b], -1, -2)
                ds_t *= inv_keep
            # softmax backward, in place: dS = P ∘ (dP - Σ_keys dP∘P)
            ds_t -= ones @ np.multiply(ds_t, p_bt, out=tmp)                    # (nh, 1, queries)
            ds_t *= p_bt
            np.matmul(np.swapaxes(ds_t, -1, -2), kd[b], out=dq[b])             # dQ = dS K
            np.matmul(ds_t, qd[b], out=dk[b])                                   # dK = dSᵀ Q
        # S = scale · Q Kᵀ: the scale multiplies both gradients (applied to the buffers
        # behind dq, dk, which are contiguous in their (B, T, nh, hs) layout)
        np.multiply(dq.base, scale, out=dq.base)
        np.multiply(dk.base, scale, out=dk.base)
        return dq, dk, dv
    # saved for backward: Q, K, V, the softmax output P and, with dropout, its 1-byte mask and P∘mask
    saved = [qd, kd, vd, p] + ([keep, pd] if keep is not None else [])
    return make_result(y, (q, k, v), backward, "attention", saved=saved, flops=2 * mm, matmul=True)


def attention_reference(q, k, v, is_causal: bool = True):
    """The plain NumPy forward on arrays (no autograd): what the blocked version computes."""
    hs = q.shape[-1]
    s = (q @ np.swapaxes(k, -1, -2)) / math.sqrt(hs)          # (B, nh, T, Tk)
    if is_causal:
        s = s + causal_mask(q.shape[-2], q.dtype, keys=k.shape[-2])
    p = np.exp(s - s.max(axis=-1, keepdims=True))
    p /= p.sum(axis=-1, keepdims=True)
    return p @ v
