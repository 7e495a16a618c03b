"""Elementwise arithmetic and math with NumPy broadcasting, forward beside backward."""
from __future__ import annotations

import numpy as np

from ..tensor import Tensor, as_tensor, make_result


def unbroadcast(g: np.ndarray, shape: tuple) -> np.ndarray:
    """Sum ``g`` over the axes that broadcasting expanded, back to ``shape``."""
    if g.shape == shape:
        return g
    extra = g.ndim - len(shape)
    axes = tuple(range(extra)) + tuple(i + extra for i, s in enumerate(shape) if s == 1 and g.shape[i + extra] != 1)
    g = g.sum(axis=axes, keepdims=True) if axes else g
    return g.reshape(shape)


def _binary(a, b):
    """Both operands as Tensors, torch's promotion rule: a Python or NumPy scalar takes the
    other operand's dtype (float32 stays float32, float64 stays float64); two Tensors — 0-d
    ones included — promote as NumPy arrays do."""
    a_scalar = not isinstance(a, Tensor) and np.ndim(a) == 0
    b_scalar = not isinstance(b, Tensor) and np.ndim(b) == 0
    a, b = as_tensor(a), as_tensor(b)
    if a_scalar and b.data.dtype.kind == "f":
        a = Tensor(np.asarray(a.data, dtype=b.data.dtype))
    if b_scalar and a.data.dtype.kind == "f":
        b = Tensor(np.asarray(b.data, dtype=a.data.dtype))
    return a, b


def add(a, b) -> Tensor:
    a, b = _binary(a, b)
    out = a.data + b.data

    def backward(g, needs):
        return (unbroadcast(g, a.shape) if needs[0] else None,
                unbroadcast(g, b.shape) if needs[1] else None)
    return make_result(out, (a, b), backward, "add", flops=out.size)


def sub(a, b) -> Tensor:
    a, b = _binary(a, b)
    out = a.data - b.data

    def backward(g, needs):
        return (unbroadcast(g, a.shape) if needs[0] else None,
                unbroadcast(-g, b.shape) if needs[1] else None)
    return make_result(out, (a, b), backward, "sub", flops=out.size)


def mul(a, b) -> Tensor:
    a, b = _binary(a, b)
    out = a.data * b.data

    def backward(g, needs):
        return (unbroadcast(g * b.data, a.shape) if needs[0] else None,
                unbroadcast(g * a.data, b.shape) if needs[1] else None)
    saved = [t.data for t, other in ((a, b), (b, a)) if other.requires_grad and not t.is_param]
    return make_result(out, (a, b), backward, "mul", saved=saved, flops=out.size)


def div(a, b) -> Tensor:
    a, b = _binary(a, b)
    out = a.data / b.data

    def backward(g, needs):
        ga = unbroadcast(g / b.data, a.shape) if needs[0] else None
        gb = unbroadcast(-g * out / b.data, b.shape) if needs[1] else None
        return ga, gb
    return make_result(out, (a, b), backward, "div", saved=[b.data] + ([out] if b.requires_grad else []),
                       flops=out.size)


def neg(a) -> Tensor:
    a = as_tensor(a)
    return make_result(-a.data, (a,), lambda g, needs: (-g,), "neg", flops=a.size)


def pow(a, p: float) -> Tensor:
    a = as_tensor(a)
    out = a.data ** p

    def backward(g, needs):
        if p == 0:              # d(x⁰)/dx = 0 everywhere, x = 0 too (0·0⁻¹ would be 0·inf = NaN)
            return (np.zeros_like(g),)
        return (g * p * a.data ** (p - 1),)
    return make_result(out, (a,), backward, "pow", saved=[a.data], flops=a.size)


def exp(a) -> Tensor:
    a = as_tensor(a)
    out = np.exp(a.data)
    return make_result(out, (a,), lambda g, needs: (g * out,), "exp", saved=[out], flops=a.size)


def log(a) -> Tensor:
    a = as_tensor(a)
    return make_result(np.log(a.data), (a,), lambda g, needs: (g / a.data,), "log", saved=[a.data], flops=a.size)


def tanh(a) -> Tensor:
    a = as_tensor(a)
    out = np.tanh(a.data)
    return make_result(out, (a,), lambda g, needs: (g * (1 - out * out),), "tanh", saved=[out], flops=a.size)
