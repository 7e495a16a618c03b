"""Scaled dot-product attention and its gradients in plain NumPy (Vaswani et al. 2017): the
independent reference the engine's fused attention and context parallelism's ring and
Ulysses are compared with. P = softmax(QKᵀ/√d + mask), Y = PV; dV = PᵀdY, dP = dY Vᵀ,
dS = P∘(dP − Σ_keys dP∘P), dQ = dS K/√d, dK = dSᵀQ/√d."""
import math

import numpy as np


def reference_attention(q, k, v, g, causal: bool) -> tuple:
    """(Y, dQ, dK, dV) for q, k, v, upstream gradient g of shape (…, T, d)."""
    T, scale = q.shape[-2], 1.0 / math.sqrt(q.shape[-1])
    s = q @ np.swapaxes(k, -1, -2) * scale
    if causal:
        s = np.where(np.tril(np.ones((T, T), bool)), s, -np.inf)
    p = np.exp(s - s.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    dp = g @ np.swapaxes(v, -1, -2)
    ds = p * (dp - (dp * p).sum(-1, keepdims=True))
    return p @ v, ds @ k * scale, np.swapaxes(ds, -1, -2) @ q * scale, np.swapaxes(p, -1, -2) @ g
