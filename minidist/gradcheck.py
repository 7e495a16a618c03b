"""Central finite-difference gradient checks (float64), with a readable failure message."""
from __future__ import annotations

import numpy as np

from .tensor import Tensor


def numerical_grad(f, x: np.ndarray, eps: float = 1e-6) -> np.ndarray:
    """∂f/∂x by central differences, one element at a time (f returns a float)."""
    g = np.zeros_like(x)
    it = np.nditer(x, flags=["multi_index"])
    for _ in it:
        i = it.multi_index
        old = x[i]
        x[i] = old + eps
        fp = f()
        x[i] = old - eps
        fm = f()
        x[i] = old
        g[i] = (fp - fm) / (2 * eps)
    return g


def gradcheck(fn, inputs: list[Tensor], eps: float = 1e-6, rtol: float = 1e-6, seed: int = 0) -> float:
    """Compare autograd with finite differences for ``fn(*inputs)`` (any output shape).

    The output is contracted with a fixed random tensor so every output element matters.
    Returns the max relative error; raises AssertionError naming the input that fails.
    """
    out = fn(*inputs)
    w = np.random.default_rng(seed).standard_normal(out.shape)
    for t in inputs:
        t.grad = None
    (out * Tensor(w)).sum().backward()

    def f():
        return float((fn(*inputs).data * w).sum())

    worst = 0.0
    for k, t in enumerate(inputs):
        if not t.requires_grad:
            continue
        num = numerical_grad(f, t.data, eps)
        ana = t.grad if t.grad is not None else np.zeros_like(t.data)
        scale = np.maximum(np.abs(num), np.abs(ana)).max() + 1e-12
        err = float(np.abs(num - ana).max() / scale)
        worst = max(worst, err)
        if err > rtol:
            i = np.unravel_index(np.argmax(np.abs(num - ana)), num.shape)
            raise AssertionError(f"gradient of input {k} ({t.name or tuple(t.shape)}) is wrong: max relative "
                                 f"error {err:.2e} > {rtol:.0e}; at index {i} autograd gives {ana[i]:.6g}, "
                                 f"finite differences {num[i]:.6g}")
    return worst
