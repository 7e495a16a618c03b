"""Softmax, log-softmax, GELU (tanh approximation, as GPT-2) and dropout."""
from __future__ import annotations

import math

import numpy as np

from ..tensor import Tensor, as_tensor, make_result


def softmax(x, axis: int = -1) -> Tensor:
    x = as_tensor(x)
    e = np.exp(x.data - x.data.max(axis=axis, keepdims=True))
    y = e / e.sum(axis=axis, keepdims=True)

    def backward(g, needs):
        # dx = y * (g - Σ g·y): the Jacobian of softmax applied without forming it
        return (y * (g - (g * y).sum(axis=axis, keepdims=True)),)
    return make_result(y, (x,), backward, "softmax", saved=[y], flops=5 * x.size)


def log_softmax(x, axis: int = -1) -> Tensor:
    x = as_tensor(x)
    shifted = x.data - x.data.max(axis=axis, keepdims=True)
    y = shifted - np.log(np.exp(shifted).sum(axis=axis, keepdims=True))

    def backward(g, needs):
        return (g - np.exp(y) * g.sum(axis=axis, keepdims=True),)
    return make_result(y, (x,), backward, "log_softmax", saved=[y], flops=5 * x.size)


_GELU_C = math.sqrt(2.0 / math.pi)


def _gelu_tanh(xd: np.ndarray) -> np.ndarray:
    """tanh(√(2/π)·(x + 0.044715·x³)), computed in place in one temporary."""
    t = xd * xd
    t *= xd
    t *= 0.044715
    t += xd
    t *= _GELU_C
    return np.tanh(t, out=t)


def gelu(x) -> Tensor:
    """0.5·x·(1 + tanh(√(2/π)·(x + 0.044715·x³))) — Hendrycks & Gimpel 2016, GPT-2's form.

    Only the input is saved (as PyTorch does); backward recomputes the tanh.
    """
    x = as_tensor(x)
    xd = x.data
    y = _gelu_tanh(xd)
    y += 1.0
    y *= xd
    y *= 0.5

    def backward(g, needs):
        t = _gelu_tanh(xd)
        dinner = xd * xd                                   # d(inner)/dx = √(2/π)·(1 + 3·0.044715·x²)
        dinner *= 3 * 0.044715 * _GELU_C
        dinner += _GELU_C
        d = t * t                                          # 0.5·x·(1 - t²)·dinner + 0.5·(1 + t)
        np.subtract(1.0, d, out=d)
        d *= xd
        d *= dinner
        t += 1.0
        d += t
        d *= 0.5
        d *= g
        return (d,)
    return make_result(y, (x,), backward, "gelu", saved=[xd], flops=12 * x.size)


def dropout(x, p: float = 0.0, training: bool = True, rng: np.random.Generator | None = None) -> Tensor:
    """Inverted dropout: zero each element with probability ``p``, scale the rest by 1/(1-p).

    ``rng`` makes it deterministic; the mask is saved for backward (1 byte per element).
    """
    x = as_tensor(x)
    if not 0.0 <= p < 1.0:
        raise ValueError(f"dropout probability must be in [0, 1), got {p}")
    if not training or p == 0.0:
        return x
    rng = rng if rng is not None else np.random.default_rng()
    keep = rng.random(x.shape) >= p                      # bool mask, 1 byte/element
    scale = np.asarray(1.0 / (1.0 - p), dtype=x.dtype)
    y = x.data * keep * scale
    return make_result(y, (x,), lambda g, needs: (g * keep * scale,), "dropout", saved=[keep], flops=x.size)
