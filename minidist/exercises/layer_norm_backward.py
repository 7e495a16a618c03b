"""Exercise: the backward of layer normalisation, checked against minidist's autograd.

Reference: the backward written beside the forward in minidist/ops/normalization.py,
reached through the engine: ``F.layer_norm(...)`` then ``.backward(grad_out)``.
"""
from __future__ import annotations

import numpy as np

from .. import functional as F
from ..tensor import Tensor
from .grading import Wrong, as_array, compare, diagnose, on_case, shapes

NAME = "layer_norm_backward"
TOPIC = "autograd"
TITLE = "Layer norm backward: dx, dweight, dbias"
NOTEBOOK = "01_autograd_and_memory"
FUNCTIONS = ("layer_norm_backward",)
# minidist's engine (its autograd computes this backward) and other autograd libraries; a helper of
# the student's called layer_norm is theirs
FORBIDDEN = ("minidist.tensor", "minidist.functional", "minidist.ops", "minidist.nn", "minidist.layers",
             "minidist.model", "minidist.gradcheck", "torch", "jax", "autograd")

STUB = '''"""The backward pass of layer normalisation (Ba et al. 2016), as minidist's engine needs it.

Forward, over the LAST axis of x (C features; any number of leading axes):

    mean = x.mean(-1)             var = ((x - mean)**2).mean(-1)      (biased: divide by C)
    rstd = 1 / sqrt(var + eps)    xhat = (x - mean) * rstd
    y = xhat * weight + bias      (weight, bias: shape (C,))

Write ``layer_norm_backward(grad_out, x, weight, eps=1e-5)`` returning the tuple
``(dx, dweight, dbias)``: the gradients of a loss L given ``grad_out`` = dL/dy (same shape
as x). Shapes: dx like x, dweight and dbias like weight.

* dbias and dweight add up over every position (every axis but the last);
* dx must account for xhat depending on x through the mean AND through rstd. With
  gh = grad_out * weight, the classic result is

      dx = rstd * (gh - mean(gh) - xhat * mean(gh * xhat))       (means over the last axis)

  so each row of dx sums to zero (a layer norm's output does not change if the same
  number is added to every feature).

x may have 1 to 4 axes and be float32 or float64; eps is any positive number. Use NumPy
only. The grader compares with minidist's autograd (F.layer_norm + backward), also on
shapes, dtypes and eps of its own, drawn from the seed it prints.

Not allowed (the grader looks at what your code calls or imports): minidist's engine
(minidist.tensor, minidist.functional, minidist.ops, minidist.nn, minidist.layers,
minidist.model, minidist.gradcheck), torch, jax, autograd. Helpers of your own may have any name (a ``layer_norm`` forward
of your own is fine).
"""
import numpy as np


def layer_norm_backward(grad_out, x, weight, eps=1e-5):
    """(dx, dweight, dbias) of y = layer_norm(x) * weight + bias."""
    raise NotImplementedError
'''

HINTS = [
    "Recompute the forward first: mean, var, rstd and xhat, keeping dims (keepdims=True).",
    "dbias = grad_out summed over every axis but the last: grad_out.reshape(-1, C).sum(0).",
    "dweight = (grad_out * xhat) summed the same way.",
    "If your dx rows do not sum to zero you dropped the mean(gh) term; if dx is wrong only when x's rows "
    "have different spreads, check the xhat * mean(gh * xhat) term.",
]


def _forward(x, eps, ddof=0):
    mean = x.mean(-1, keepdims=True)
    var = x.var(-1, keepdims=True, ddof=ddof)
    rstd = 1.0 / np.sqrt(var + eps)
    return (x - mean) * rstd, rstd


def reference():
    class Reference:
        @staticmethod
        def layer_norm_backward(grad_out, x, weight, eps=1e-5):
            xt, wt, bt = (Tensor(np.array(a, dtype=np.float64), requires_grad=True)
                          for a in (x, weight, np.zeros_like(weight)))
            F.layer_norm(xt, wt, bt, eps).backward(np.asarray(grad_out, dtype=np.float64))
            return xt.grad, wt.grad, bt.grad
    return Reference


def _dx(g, x, w, eps, ddof=0, drop_mean=False, drop_proj=False, weight=True, rstd_power=1):
    xhat, rstd = _forward(x, eps, ddof)
    gh = g * w if weight else g
    out = gh.copy()
    if not drop_mean:
        out = out - gh.mean(-1, keepdims=True)
    if not drop_proj:
        out = out - xhat * (gh * xhat).mean(-1, keepdims=True)
    return out * rstd ** rstd_power


DX_MISTAKES = [
    (lambda g, x, w, e: _dx(g, x, w, e, drop_proj=True, drop_mean=True),
     "your dx is rstd * grad_out * weight: it treats mean and rstd as constants. Both depend on x: subtract "
     "mean(gh) and xhat * mean(gh * xhat)"),
    (lambda g, x, w, e: _dx(g, x, w, e, drop_proj=True),
     "your dx lacks the - xhat * mean(gh * xhat) term: the path through rstd (var depends on x)"),
    (lambda g, x, w, e: _dx(g, x, w, e, drop_mean=True),
     "your dx lacks the - mean(gh) term: the path through the mean (its rows must sum to zero)"),
    (lambda g, x, w, e: _dx(g, x, w, e, weight=False),
     "your dx forgot the weight: the gradient reaching xhat is gh = grad_out * weight"),
    (lambda g, x, w, e: _dx(g, x, w, e, ddof=1),
     "your dx uses the unbiased variance (divide by C - 1): layer norm divides by C (np.var's default ddof=0)"),
    (lambda g, x, w, e: _dx(g, x, w, e, rstd_power=0),
     "your dx is missing the final factor rstd = 1 / sqrt(var + eps)"),
    (lambda g, x, w, e: _dx(g, x, w, 0.0),
     "your dx ignores eps: rstd = 1 / sqrt(var + eps)"),
]


def _case(seed, shape, scale=1.0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=shape) * scale * rng.uniform(0.5, 3.0, size=shape[:-1] + (1,))   # rows of different spread
    w = rng.normal(size=shape[-1])
    g = rng.normal(size=shape)
    return g, x, w


def _run(sol, g, x, w, eps=1e-5):
    out = sol.layer_norm_backward(g.copy(), x.copy(), w.copy(), eps)
    if isinstance(out, (tuple, list)) and len(out) == 3 and any(o is None for o in out):
        missing = [n for o, n in zip(out, ("dx", "dweight", "dbias")) if o is None]
        raise Wrong(f"for x of shape {x.shape}: your {', '.join(missing)} {'is' if len(missing) == 1 else 'are'} None")
    if not isinstance(out, (tuple, list)) or len(out) != 3:
        raise Wrong(f"return the tuple (dx, dweight, dbias); you returned {type(out).__name__}"
                    + (f" of length {len(out)}" if isinstance(out, (tuple, list)) else ""))
    return [as_array(o, n) for o, n in zip(out, ("dx", "dweight", "dbias"))]


def check_shapes(sol):
    g, x, w = _case(0, (2, 3, 5))
    dx, dw, db = _run(sol, g, x, w)
    for name, got, want in (("dx", dx, x.shape), ("dweight", dw, w.shape), ("dbias", db, w.shape)):
        if got.shape != want:
            extra = " — sum over EVERY axis but the last (positions and batch)" if name != "dx" else ""
            raise Wrong(f"for x of shape {x.shape}: {name} has shape {got.shape}, expected {want}{extra}")


def _param_grad(index, name, rule):
    def check(sol):
        g, x, w = _case(1, (2, 3, 5))
        got = _run(sol, g, x, w)[index]
        want = reference().layer_norm_backward(g, x, w)[index]
        if got.shape == want.shape and np.allclose(got, want / 6):
            raise Wrong(f"{name} is the MEAN over the 6 positions; the loss adds every position's "
                        f"contribution, so {rule} is a SUM")
        compare(got, want, f"{name} for x of shape {x.shape}", hint=f"{name} = {rule}")
    return check


def _dx_check(seed, shape, eps, ones):
    def check(sol):
        g, x, w = _case(seed, shape)
        if ones:
            w = np.ones_like(w)
        got = _run(sol, g, x, w, eps)[0]
        want = reference().layer_norm_backward(g, x, w, eps)[0]
        try:
            compare(got, want, f"dx for x of shape {x.shape}", rtol=1e-6, atol=1e-8)
        except Wrong as exc:
            why = diagnose(got, DX_MISTAKES, g, x, w, eps)
            rows = np.abs(got.sum(-1)).max() if got.shape == want.shape else 0.0
            extra = (f"\nThe rows of your dx sum to up to {rows:.3g}; they must sum to 0 (adding a constant to "
                     f"every feature does not change a layer norm's output)") if rows > 1e-6 and not why else ""
            raise Wrong(f"{exc}" + (f"\nY{why[1:]}." if why else "") + extra) from None
    return check


def held_out(sol, rng):
    """x with 1 to 4 axes (a feature axis of 2 to 6), float64 and float32, eps from 1e-6 to 0.5."""
    for i, shape in enumerate(shapes(rng, 4, 1, 4, size=(2, 6))):
        dtype = (np.float64, np.float32)[i % 2]
        g, x, w = (a.astype(dtype) for a in _case(int(rng.integers(1 << 30)), shape))
        eps = float(10.0 ** rng.uniform(-6, np.log10(0.5)))
        case = f"{np.dtype(dtype)} x of shape {shape}, eps = {eps:.3g}"
        with on_case(sol, case, "The statement promises x of 1 to 4 axes: sum over every axis but the last, "
                                "however many there are (axis=tuple(range(x.ndim - 1)), not axis=(0, 1))"):
            got = _run(sol, g, x, w, eps)
        want = reference().layer_norm_backward(g, x, w, eps)
        tol = {"rtol": 1e-4, "atol": 1e-4} if dtype == np.float32 else {"rtol": 1e-6, "atol": 1e-8}
        for name, mine, right in zip(("dx", "dweight", "dbias"), got, want):
            if mine.shape != right.shape:
                every = (" — sum over EVERY axis but the last, however many x has: "
                         "grad_out.reshape(-1, C).sum(0) or .sum(axis=tuple(range(x.ndim - 1)))") if name != "dx" else ""
                raise Wrong(f"{case}: {name} has shape {mine.shape}, expected {right.shape}{every}")
            try:
                compare(mine, right, f"{case}: {name}", **tol)
            except Wrong as exc:
                why = diagnose(mine, DX_MISTAKES, *(a.astype(np.float64) for a in (g, x, w)), eps,
                               **tol) if name == "dx" else ""
                raise Wrong(f"{exc}" + (f"\nY{why[1:]}." if why else "")) from None


CHECKS = [
    ("shapes: dx like x, dweight and dbias like weight", check_shapes),
    ("dbias = grad_out summed over all positions", _param_grad(2, "dbias", "grad_out summed over every axis but the last")),
    ("dweight = (grad_out * xhat) summed over all positions",
     _param_grad(1, "dweight", "(grad_out * xhat) summed over every axis but the last")),
    ("dx with weight = 1", _dx_check(2, (4, 6), 1e-5, True)),
    ("dx with a random weight, (2, 3, 8) input", _dx_check(3, (2, 3, 8), 1e-5, False)),
    ("dx with a large eps = 0.5 (eps inside the square root)", _dx_check(4, (3, 4), 0.5, False)),
    ("held out: x with 1 to 4 axes, float32 and float64, eps of the grader's", held_out),
]
