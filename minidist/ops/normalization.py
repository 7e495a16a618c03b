"""Layer normalisation (Ba et al. 2016) over the last axis, forward beside backward.

The arithmetic is the textbook one, step for step; the steps run in place in two buffers
instead of allocating a temporary for every subexpression.
"""
from __future__ import annotations

import numpy as np

from ..tensor import Tensor, as_tensor, make_result
from .linalg import broadcast_rows


def layer_norm(x, weight=None, bias=None, eps: float = 1e-5) -> Tensor:
    """y = (x - mean) / sqrt(var + eps) * weight + bias, statistics over the last axis."""
    x = as_tensor(x)
    if weight is None and bias is not None:
        raise ValueError("layer_norm: bias without weight is not supported")
    if weight is not None and weight.shape != x.shape[-1:]:
        raise ValueError(f"layer_norm: weight shape {weight.shape} != normalised shape {x.shape[-1:]}")
    if bias is not None and bias.shape != x.shape[-1:]:
        raise ValueError(f"layer_norm: bias shape {bias.shape} != normalised shape {x.shape[-1:]}")
    xc = x.data - x.data.mean(axis=-1, keepdims=True)       # (..., C) centred
    y = np.multiply(xc, xc)                                  # (..., C) scratch: xc², later the output
    var = y.mean(axis=-1, keepdims=True)
    rstd = 1.0 / np.sqrt(var + eps)                          # (..., 1)
    xhat = xc
    xhat *= rstd                                             # (..., C), in place of xc
    if weight is not None:
        broadcast_rows(np.multiply, xhat, weight.data, y)     # over long rows: see wide_rows
    else:
        y[...] = xhat
    if bias is not None:
        broadcast_rows(np.add, y, bias.data, y)
    lead = tuple(range(x.ndim - 1))

    def backward(g, needs):
        gx = gw = gb = None
        if needs[0]:
            # dx = rstd * (gh - mean(gh) - xhat * mean(gh * xhat)), gh = g * weight
            if weight is None:
                gh = g.copy()
            elif g.flags.c_contiguous:
                gh = broadcast_rows(np.multiply, g, weight.data, np.empty(g.shape, np.result_type(g, weight.data)))
            else:                                       # g·w laid out as g, as the reductions below saw it
                gh = g * weight.data
            t = np.multiply(gh, xhat)
            c = t.mean(axis=-1, keepdims=True)
            gh -= gh.mean(axis=-1, keepdims=True)
            gh -= np.multiply(xhat, c, out=t)
            gh *= rstd
            gx = gh
        if weight is not None and needs[1]:
            # t is free: g·x̂ goes there when it is laid out (C order) and typed as NumPy would make it
            reuse = needs[0] and g.flags.c_contiguous and xhat.flags.c_contiguous and t.flags.c_contiguous \
                and t.dtype == np.result_type(g, xhat)
            gw = np.multiply(g, xhat, out=t if reuse else None).sum(axis=lead)
        if bias is not None and needs[2]:
            gb = g.sum(axis=lead)
        return gx, gw, gb
    parents = [x] + [t for t in (weight, bias) if t is not None]

    def backward_parents(g, needs):
        gx, gw, gb = backward(g, list(needs) + [False] * (3 - len(needs)))
        return (gx, gw, gb)[:len(parents)]
    return make_result(y, parents, backward_parents, "layer_norm", saved=[xhat, rstd], flops=8 * x.size)
