"""Matrix products: ``matmul`` and ``linear``, with input and weight gradients apart.

For ``y = x @ W (+ b)`` the backward is two independent matmuls:

* input gradient  ``dx = dy @ Wᵀ``   — needed *now* by the previous layer (pipeline ``B``);
* weight gradient ``dW = xᵀ @ dy``   — needed only by the optimizer step (pipeline ``W``).

Zero-bubble schedules (Qi et al. 2023, "Zero Bubble Pipeline Parallelism") run them at
different times; :func:`linear_input_grad` and :func:`linear_weight_grad` are the two
halves, and :meth:`minidist.Tensor.backward` with ``defer_weight_grad=True`` calls them apart.
FLOPs: a (m×k)·(k×n) product costs 2·m·n·k. Under ``autocast`` both operands are rounded
to the low-precision format first (:func:`cast_input`), and so is ``linear``'s bias (as
``torch.autocast``'s ``F.linear``): the float32 product of rounded operands is what a tensor
core computes (exact products, fp32 accumulation). Every product
is an ``np.matmul`` call, never ``@`` (the same ufunc), so that a profiler can time the BLAS
part by swapping this module's ``np.matmul`` (benchmarks/bench_engine.py does).
"""
from __future__ import annotations

import numpy as np

from ..autocast import cast_input
from ..device import current_device
from ..tensor import Tensor, as_tensor, make_result
from .elementwise import unbroadcast


def linear_input_grad(dy: np.ndarray, weight: np.ndarray) -> np.ndarray:
    """dx = dy @ Wᵀ for W stored (in, out)."""
    return np.matmul(dy, weight.T)


def linear_weight_grad(x: np.ndarray, dy: np.ndarray) -> np.ndarray:
    """dW = xᵀ @ dy with the leading (batch, time) axes folded into one: (in, out)."""
    return np.matmul(x.reshape(-1, x.shape[-1]).T, dy.reshape(-1, dy.shape[-1]))


# A vector broadcast over the rows of an (m, n) array runs one NumPy inner loop per row; n
# of a few hundred makes that per-loop cost about as large as the arithmetic (measured: a
# (1024, 256) array times a 256-vector 2x slower than times an array of its shape). Viewed
# as (m/k, k·n) against the vector tiled k times, the same products and sums run in loops
# of about WIDE_ROW numbers.
WIDE_ROW = 16384


def wide_rows(a: np.ndarray, v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``a`` (..., n) and a vector ``v`` (n,) as a view (m/k, k·n) of ``a`` and ``v`` tiled k
    times, k the largest power of two up to WIDE_ROW / n that divides a's m rows (1 when
    ``a`` is not contiguous): ``op(a_wide, v_wide)`` is ``op(a, v)`` element for element."""
    n = v.shape[-1]
    m, k = a.size // max(n, 1), 1
    while a.flags.c_contiguous and m % (2 * k) == 0 and 0 < 2 * k * n <= WIDE_ROW:
        k *= 2
    return a.reshape(m // k, k * n), (np.tile(v, k) if k > 1 else v)


def broadcast_rows(op, a: np.ndarray, v: np.ndarray, out: np.ndarray) -> np.ndarray:
    """``op(a, v, out=out)`` for a ufunc ``op`` and a vector ``v`` along a's last axis, over
    long rows (``wide_rows``) when ``a`` and ``out`` are both in C order."""
    if a.flags.c_contiguous and out.flags.c_contiguous and a.shape == out.shape:
        aw, vw = wide_rows(a, v)
        op(aw, vw, out=out.reshape(aw.shape))
    else:
        op(a, v, out=out)
    return out


def _charge(name, flops):
    dev = current_device()
    if dev is not None:
        dev.compute(name, int(flops), matmul=True)


def linear(x, weight, bias=None) -> Tensor:
    """y = x @ W + b, with W of shape (in_features, out_features) (nanoGPT/Conv1D layout)."""
    x, weight = as_tensor(x), as_tensor(weight)
    if x.shape[-1] != weight.shape[0]:
        raise ValueError(f"linear: input has {x.shape[-1]} features but weight is {weight.shape} "
                         f"(in_features, out_features)")
    xd, wd = cast_input(x.data), cast_input(weight.data)       # rounded under autocast
    x2 = xd.reshape(-1, x.shape[-1])                           # (B*T, in)
    out = np.matmul(x2, wd)                                    # (B*T, out)
    if bias is not None:
        bias = as_tensor(bias)
        if bias.shape != (weight.shape[1],):          # broadcast_rows would tile a bias that divides the rows
            raise ValueError(f"linear: bias has shape {bias.shape} but the weight {weight.shape} gives "
                             f"{weight.shape[1]} output features; the bias must have shape ({weight.shape[1]},)")
        broadcast_rows(np.add, out, cast_input(bias.data), out)    # rounded too, as torch.autocast's linear
    out = out.reshape(*x.shape[:-1], weight.shape[1])           # (..., out)
    m, k, n = x2.shape[0], weight.shape[0], weight.shape[1]

    def backward(g, needs):
        g2 = g.reshape(-1, n)
        gx = gw = gb = None
        if needs[0]:
            _charge("linear.dx", 2 * m * n * k)
            gx = linear_input_grad(g2, wd).reshape(x.shape)
        if needs[1]:
            _charge("linear.dW", 2 * m * n * k)
            gw = linear_weight_grad(x2, g2)
        if bias is not None and needs[2]:
            gb = g2.sum(axis=0)
        return gx, gw, gb
    parents = (x, weight) if bias is None else (x, weight, bias)
    saved = [xd] if weight.requires_grad and not x.is_param else []
    return make_result(out, parents, backward, "linear", saved=saved, flops=2 * m * n * k, matmul=True)


def matmul(a, b) -> Tensor:
    """NumPy ``@`` with broadcasting of batch axes (e.g. attention's (B, nh, T, hs) products)."""
    a, b = as_tensor(a), as_tensor(b)
    if a.ndim < 2 or b.ndim < 2:
        raise ValueError(f"matmul needs operands with at least 2 dims, got {a.shape} and {b.shape}")
    if a.shape[-1] != b.shape[-2]:
        raise ValueError(f"matmul: shapes {a.shape} and {b.shape} are not aligned "
                         f"({a.shape[-1]} != {b.shape[-2]})")
    ad, bd = cast_input(a.data), cast_input(b.data)           # rounded under autocast
    out = np.matmul(ad, bd)
    m, k, n = a.shape[-2], a.shape[-1], b.shape[-1]
    batch = out.size // (m * n)

    def backward(g, needs):
        ga = gb = None
        if needs[0]:
            _charge("matmul.da", 2 * batch * m * n * k)
            ga = unbroadcast(np.matmul(g, np.swapaxes(bd, -1, -2)), a.shape)
        if needs[1]:
            _charge("matmul.db", 2 * batch * m * n * k)
            gb = unbroadcast(np.matmul(np.swapaxes(ad, -1, -2), g), b.shape)
        return ga, gb
    saved = [d for t, d, other in ((a, ad, b), (b, bd, a)) if other.requires_grad and not t.is_param]
    return make_result(out, (a, b), backward, "matmul", saved=saved, flops=2 * batch * m * n * k, matmul=True)
