"""Causal scaled dot-product attention (Vaswani et al. 2017), fused forward and backward.

For one head: S = Q Kᵀ / √d, causal mask (position t sees only positions ≤ t),
P = softmax(S), Y = P V. The (T × T) probabilities P are what attention saves for
backward — the 5·a·s²·b term of Korthikanti et al. 2022's activation formula.
FLOPs: 2·T·T·d for Q Kᵀ and again for P V, per head and sequence; backward twice that.
Under ``autocast`` the operands of both products (Q, K, then P, V) are rounded to the
low-precision format; the softmax itself runs in fp32, as fused attention kernels do.
"""
from __future__ import annotations

import math

import numpy as np

from ..precision.autocast import cast_input
from ..tensor import Tensor, as_tensor, make_result
from .linalg import _charge

_MASKS: dict = {}


def causal_mask(T: int, dtype) -> np.ndarray:
    """(T, T) additive mask: 0 on and below the diagonal, -inf above (cached)."""
    key = (T, np.dtype(dtype))
    if key not in _MASKS:
        _MASKS[key] = np.triu(np.full((T, T), -np.inf, dtype=dtype), k=1)
    return _MASKS[key]


def scaled_dot_product_attention(q, k, v, is_causal: bool = True, dropout_p: float = 0.0,
                                 rng: np.random.Generator | None = None) -> Tensor:
    """q, k, v: (B, nh, T, hs) → (B, nh, T, hs). Causal by default (GPT)."""
    q, k, v = as_tensor(q), as_tensor(k), as_tensor(v)
    if not (q.shape == k.shape == v.shape) or q.ndim != 4:
        raise ValueError(f"attention expects q, k, v of equal shape (B, nh, T, hs); got {q.shape}, {k.shape}, {v.shape}")
    B, nh, T, hs = q.shape
    scale = np.asarray(1.0 / math.sqrt(hs), dtype=q.dtype)
    qd, kd, vd = cast_input(q.data), cast_input(k.data), cast_input(v.data)   # autocast
    s = (qd @ np.swapaxes(kd, -1, -2)) * scale                # (B, nh, T, T)
    if is_causal:
        s += causal_mask(T, q.dtype)
    s -= s.max(axis=-1, keepdims=True)
    p = np.exp(s, out=s)
    p /= p.sum(axis=-1, keepdims=True)                        # (B, nh, T, T) probabilities
    p = cast_input(p)                                         # P is an operand of P V
    keep = None
    if dropout_p > 0.0:
        rng = rng if rng is not None else np.random.default_rng()
        keep = (rng.random(p.shape) >= dropout_p) / np.asarray(1.0 - dropout_p, dtype=q.dtype)
        pd = p * keep
    else:
        pd = p
    y = pd @ vd                                               # (B, nh, T, hs)
    mm = 2 * B * nh * T * T * hs                              # one of the two products

    def backward(g, needs):
        _charge("attention.backward", 4 * mm)
        dv = np.swapaxes(pd, -1, -2) @ g                      # (B, nh, T, hs)
        dp = g @ np.swapaxes(vd, -1, -2)                      # (B, nh, T, T)
        if keep is not None:
            dp *= keep
        ds = p * (dp - (dp * p).sum(axis=-1, keepdims=True))  # softmax backward
        ds *= scale
        dq = ds @ kd
        dk = np.swapaxes(ds, -1, -2) @ qd
        return dq, dk, dv
    saved = [qd, kd, vd, p] + ([keep] if keep is not None else [])
    return make_result(y, (q, k, v), backward, "attention", saved=saved, flops=2 * mm, matmul=True)
