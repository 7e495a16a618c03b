"""Reductions with NumPy's ``axis``/``keepdims``: sum, mean, max."""
from __future__ import annotations

import builtins

import numpy as np

from ..tensor import Tensor, as_tensor, make_result


def _expand(g, shape, axis, keepdims):
    """Give a reduced gradient back its reduced axes so it broadcasts against ``shape``."""
    if axis is None:
        return np.broadcast_to(np.reshape(g, (1,) * len(shape)), shape)
    if not keepdims:
        axes = (axis,) if np.isscalar(axis) else axis
        g = np.expand_dims(g, tuple(ax % len(shape) for ax in axes))
    return np.broadcast_to(g, shape)


def sum(a, axis=None, keepdims=False) -> Tensor:
    a = as_tensor(a)
    out = np.sum(a.data, axis=axis, keepdims=keepdims)
    return make_result(out, (a,), lambda g, needs: (_expand(g, a.shape, axis, keepdims).copy(),), "sum", flops=a.size)


def mean(a, axis=None, keepdims=False) -> Tensor:
    a = as_tensor(a)
    out = np.mean(a.data, axis=axis, keepdims=keepdims)
    count = a.size // builtins.max(np.size(out), 1)
    return make_result(out, (a,), lambda g, needs: (_expand(g / count, a.shape, axis, keepdims).copy(),),
                       "mean", flops=a.size)


def max(a, axis=None, keepdims=False) -> Tensor:
    """Maximum; ties share the gradient equally (as ``torch.amax``)."""
    a = as_tensor(a)
    out = np.max(a.data, axis=axis, keepdims=keepdims)

    def backward(g, needs):
        # the maximum again, from the input: ``out`` may have been rounded in place under autocast,
        # and then it equals no element (every gradient 0/0)
        mask = a.data == np.max(a.data, axis=axis, keepdims=True)
        count = mask.sum(axis=axis, keepdims=True)
        return (mask * _expand(g, a.shape, axis, keepdims) / count,)
    return make_result(out, (a,), backward, "max", saved=[a.data], flops=a.size)
