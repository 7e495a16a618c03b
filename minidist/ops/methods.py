"""Tensor's operators — ``x + y``, ``x @ w``, ``x[i]``, ``x.sum()``, ``x.T`` — bound to the ops.

An op needs :class:`~minidist.tensor.Tensor`, so tensor.py sits below ``minidist.ops`` in the
layers and cannot import them. This module attaches the operators to the class instead,
once, when ``minidist.ops`` is first imported (``import minidist`` does it).
"""
from __future__ import annotations

from ..tensor import Tensor
from .elementwise import add, div, exp, log, mul, neg, pow, sub, tanh
from .linalg import matmul
from .reduce import max, mean, sum
from .shape import getitem, reshape, split, transpose


def _reshape(self, *shape):
    """``x.reshape(2, 3)`` and ``x.reshape((2, 3))`` alike, as in torch and NumPy."""
    return reshape(self, shape[0] if len(shape) == 1 and isinstance(shape[0], (tuple, list)) else shape)


OPERATORS = {
    "__add__": lambda self, o: add(self, o), "__radd__": lambda self, o: add(o, self),
    "__sub__": lambda self, o: sub(self, o), "__rsub__": lambda self, o: sub(o, self),
    "__mul__": lambda self, o: mul(self, o), "__rmul__": lambda self, o: mul(o, self),
    "__truediv__": lambda self, o: div(self, o), "__rtruediv__": lambda self, o: div(o, self),
    "__neg__": lambda self: neg(self), "__pow__": lambda self, p: pow(self, p),
    "__matmul__": lambda self, o: matmul(self, o), "__rmatmul__": lambda self, o: matmul(o, self),
    "__getitem__": lambda self, idx: getitem(self, idx),
    "reshape": _reshape, "view": _reshape,
    "transpose": lambda self, a, b: transpose(self, a, b),
    "sum": lambda self, axis=None, keepdims=False: sum(self, axis, keepdims),
    "mean": lambda self, axis=None, keepdims=False: mean(self, axis, keepdims),
    "max": lambda self, axis=None, keepdims=False: max(self, axis, keepdims),
    "exp": lambda self: exp(self), "log": lambda self: log(self), "tanh": lambda self: tanh(self),
    "split": lambda self, size, axis=0: split(self, size, axis),
    "T": property(lambda self: transpose(self, -1, -2)),
}

for _name, _method in OPERATORS.items():
    setattr(Tensor, _name, _method)
