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


def gelu(x) -> Tensor:
    """0.5·x·(1 + tanh(√(2/π)·(x + 0.044715·x³))) — Hendrycks & Gimpel 2016, GPT-2's form.

    Only the input is saved (as PyTorch does); backward recomputes the tanh.
    """
    x = as_tensor(x)
    xd = x.data
    inner = _GELU_C * (xd + 0.044715 * xd * xd * xd)
    y = 0.5 * xd * (1.0 + np.tanh(inner))

    def backward(g, needs):
        t = np.tanh(_GELU_C * (xd + 0.044715 * xd * xd * xd))
        dt = _GELU_C * (1.0 + 3 * 0.044715 * xd * xd)
        return (g * (0.5 * (1.0 + t) + 0.5 * xd * (1.0 - t * t) * dt),)
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
