"""Exercise: a LoRA layer by hand — forward, backward, and the merge for inference.

Reference: ``minidist.peft.lora.LoRALinear`` (minidist/peft/lora.py) through minidist's
autograd, and its ``delta_weight`` for the merge.
"""
from __future__ import annotations

import numpy as np

from ..nn import Dropout, Linear
from ..peft.lora import LoRALinear
from ..tensor import Tensor
from .grading import Wrong, as_array, compare, diagnose, on_case

NAME = "lora_layer"
TOPIC = "fine-tuning"
TITLE = "LoRA: y = xW + b + (α/r)·xAB, its gradients, and merging it into W"
NOTEBOOK = "14_parameter_efficient_fine_tuning"
FUNCTIONS = ("lora_forward", "lora_backward", "lora_merge")
FORBIDDEN_IMPORTS = ("minidist.peft", "minidist.functional", "minidist.ops", "minidist.tensor", "minidist.nn",
                     "torch", "jax")

STUB = '''"""A LoRA layer by hand (Hu et al. 2021, "LoRA: Low-Rank Adaptation of Large Language Models", §4.1).

A pretrained linear layer y = x·W + b is frozen; LoRA trains a rank-r update beside it. With
W stored (d_in, d_out) as in minidist (and nanoGPT), the layer computes

    y = x·W + b + s · (x·A)·B          s = alpha / r

* x: (..., d_in) — any number of leading axes (batch, time);
* W: (d_in, d_out), b: (d_out,) — frozen; A: (d_in, r), B: (r, d_out) — trained;
* alpha: LoRA's lora_alpha (a number); r is A's second dimension.

Write three functions (no dropout here):

``lora_forward(x, W, b, A, B, alpha)`` -> y, shape (..., d_out).

``lora_backward(x, W, A, B, alpha, dy)`` -> (dx, dA, dB): the gradients of a loss whose
gradient with respect to y is dy (..., d_out). W and b are frozen: they get no gradient,
but dx still flows through W AND through the low-rank path. dA and dB sum over every
leading position of x, like any weight gradient.

``lora_merge(W, A, B, alpha)`` -> the (d_in, d_out) weight of ONE plain linear layer that
computes the same y as the LoRA layer (for inference without the extra matmuls).

Return new arrays (do not modify the inputs). NumPy only: not allowed are minidist's own
LoRA and autograd (minidist.peft, minidist.functional, minidist.ops, minidist.tensor,
minidist.nn), torch and jax. The grader also tries shapes and ranks of its own.
"""
import numpy as np


def lora_forward(x, W, b, A, B, alpha):
    raise NotImplementedError


def lora_backward(x, W, A, B, alpha, dy):
    raise NotImplementedError


def lora_merge(W, A, B, alpha):
    raise NotImplementedError
'''

HINTS = [
    "The scale is alpha / r with r = A.shape[1] — not alpha, not 1/r: it keeps the update's size fixed when r changes.",
    "Fold the leading axes first: X = x.reshape(-1, d_in), G = dy.reshape(-1, d_out); then every gradient is a "
    "matrix product of X, G, A, B and their transposes.",
    "dB = s·(XA)ᵀG and dA = s·Xᵀ(G·Bᵀ); dx = G·Wᵀ + s·(G·Bᵀ)·Aᵀ — the frozen W still passes the gradient on.",
    "Merging: x·W + s·x·A·B = x·(W + s·A·B).",
]


def _layer(W, b, A, B, alpha):
    rng = np.random.default_rng(0)
    base = Linear.from_arrays(np.array(W, np.float64), np.array(b, np.float64))
    layer = LoRALinear(base, A.shape[1], alpha, Dropout(0.0), rng)
    base.weight.requires_grad = base.bias.requires_grad = False
    layer.lora_A.data[...] = A
    layer.lora_B.data[...] = B
    return layer


def reference():
    class Reference:
        @staticmethod
        def lora_forward(x, W, b, A, B, alpha):
            return _layer(W, b, A, B, alpha)(Tensor(np.array(x, np.float64))).data

        @staticmethod
        def lora_backward(x, W, A, B, alpha, dy):
            layer = _layer(W, np.zeros(W.shape[1]), A, B, alpha)
            xt = Tensor(np.array(x, np.float64), requires_grad=True)
            layer(xt).backward(np.array(dy, np.float64))
            return xt.grad, layer.lora_A.grad, layer.lora_B.grad

        @staticmethod
        def lora_merge(W, A, B, alpha):
            return W + _layer(W, np.zeros(W.shape[1]), A, B, alpha).delta_weight()
    return Reference


# -- typical mistakes ------------------------------------------------------------------------------
def _scale(alpha, r, kind):
    return {"alpha/r": alpha / r, "alpha": alpha, "1/r": 1.0 / r, "none": 1.0, "r/alpha": r / alpha}[kind]


def _fwd(kind):
    def y(x, W, b, A, B, alpha):
        return x @ W + b + _scale(alpha, A.shape[1], kind) * (x @ A) @ B
    return y


def _bwd(scale="alpha/r", dx_path=True, part=None):
    def grads(x, W, A, B, alpha, dy):
        s = _scale(alpha, A.shape[1], scale)
        X, G = x.reshape(-1, x.shape[-1]), dy.reshape(-1, dy.shape[-1])
        dA, dB = s * X.T @ (G @ B.T), s * (X @ A).T @ G
        dx = G @ W.T + (s * (G @ B.T) @ A.T if dx_path else 0)
        out = {"dx": dx.reshape(x.shape), "dA": dA, "dB": dB}
        return out[part]
    return grads


FORWARD_MISTAKES = [
    (_fwd("alpha"), "your update is scaled by alpha; LoRA scales it by alpha / r"),
    (_fwd("1/r"), "your update is scaled by 1/r; LoRA scales it by alpha / r"),
    (_fwd("none"), "your update is not scaled: multiply x·A·B by alpha / r"),
    (_fwd("r/alpha"), "your scale is upside down: r / alpha instead of alpha / r"),
]


def _backward_mistakes(part):
    out = [(_bwd("alpha", part=part), "your gradient carries the scale alpha; it is alpha / r, as in the forward"),
           (_bwd("none", part=part), "your gradient forgets the scale alpha / r that multiplies the update")]
    if part == "dx":
        out.insert(0, (_bwd(dx_path=False, part=part), "your dx flows through W only; the low-rank path adds "
                                                       "s·(dy·Bᵀ)·Aᵀ (A and B are in the graph between x and y)"))
    return out


def _case(seed, lead, d_in, d_out, r, dtype=np.float64):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(*lead, d_in)).astype(dtype)
    W, b = rng.normal(size=(d_in, d_out)).astype(dtype), rng.normal(size=d_out).astype(dtype)
    A, B = rng.normal(size=(d_in, r)).astype(dtype), rng.normal(size=(r, d_out)).astype(dtype)
    dy = rng.normal(size=(*lead, d_out)).astype(dtype)
    alpha = float(rng.choice([1.0, 2.0 * r, 16.0]))
    return x, W, b, A, B, alpha, dy


def _what(x, A, alpha):
    return f"x {x.shape}, r = {A.shape[1]}, alpha = {alpha:g}"


def _unchanged(args, copies, what):
    names = [n for n, a, c in zip(("x", "W", "b", "A", "B", "dy"), args, copies) if not np.array_equal(a, c)]
    if names:
        raise Wrong(f"{what}: your function changed its input {', '.join(names)}; return new arrays instead")


def check_forward(sol, x, W, b, A, B, alpha, dy, tol=(1e-9, 1e-12)):
    what = _what(x, A, alpha)
    args = (x, W, b, A, B, dy)
    copies = [a.copy() for a in args]
    with on_case(sol, what, "x may have any number of leading axes: multiply along the last one"):
        got = as_array(sol.lora_forward(x.copy(), W.copy(), b.copy(), A.copy(), B.copy(), alpha), "y")
    _unchanged(args, copies, what)
    want = reference().lora_forward(x, W, b, A, B, alpha)
    try:
        compare(got, want, f"{what}: y", rtol=tol[0], atol=tol[1])
    except Wrong as exc:
        why = diagnose(got, FORWARD_MISTAKES, x, W, b, A, B, alpha)
        raise Wrong(f"{exc}" + (f"\nY{why[1:]}." if why else "")) from None


def check_backward(sol, x, W, b, A, B, alpha, dy, tol=(1e-9, 1e-12)):
    what = _what(x, A, alpha)
    with on_case(sol, what, "fold the leading axes of x and dy into one before the products"):
        out = sol.lora_backward(x.copy(), W.copy(), A.copy(), B.copy(), alpha, dy.copy())
    if not isinstance(out, (tuple, list)) or len(out) != 3:
        raise Wrong(f"{what}: return the tuple (dx, dA, dB); you returned {type(out).__name__}")
    want = reference().lora_backward(x, W, A, B, alpha, dy)
    for name, mine, expected in zip(("dx", "dA", "dB"), out, want):
        mine = as_array(mine, name)
        if mine.shape != expected.shape:
            hint = " — dA and dB have the shapes of A and B (sum over every leading position)" if name != "dx" else ""
            raise Wrong(f"{what}: {name} has shape {mine.shape}, expected {expected.shape}{hint}")
        try:
            compare(mine, expected, f"{what}: {name}", rtol=tol[0], atol=tol[1])
        except Wrong as exc:
            why = diagnose(mine, _backward_mistakes(name), x, W, A, B, alpha, dy)
            raise Wrong(f"{exc}" + (f"\nY{why[1:]}." if why else "")) from None


def check_merge(sol, x, W, b, A, B, alpha, dy, tol=(1e-9, 1e-12)):
    what = _what(x, A, alpha)
    with on_case(sol, what):
        merged = as_array(sol.lora_merge(W.copy(), A.copy(), B.copy(), alpha), "merged W")
    if merged.shape != W.shape and merged.shape in ((A.shape[1], A.shape[1]), (B.shape[1], A.shape[0])):
        raise Wrong(f"{what}: your merged weight has shape {merged.shape}; the update is A·B, (d_in, d_out) = "
                    f"{W.shape}, like W")
    want = reference().lora_merge(W, A, B, alpha)
    try:
        compare(merged, want, f"{what}: merged W", rtol=tol[0], atol=tol[1])
    except Wrong as exc:
        mistakes = [(lambda W, A, B, a: W + A @ B, "you add A·B without its scale alpha / r"),
                    (lambda W, A, B, a: W + a * A @ B, "you scale A·B by alpha; the scale is alpha / r")]
        why = diagnose(merged, mistakes, W, A, B, alpha)
        raise Wrong(f"{exc}" + (f"\nY{why[1:]}." if why else "")) from None
    y_merged = x @ merged + b
    compare(y_merged, reference().lora_forward(x, W, b, A, B, alpha), f"{what}: x·(merged W) + b against the "
            f"LoRA layer's y", rtol=tol[0], atol=tol[1])


def _fixed(check, seed, lead, d_in, d_out, r):
    return lambda sol: check(sol, *_case(seed, lead, d_in, d_out, r))


def held_out(sol, rng):
    """Shapes and ranks the statement does not show, drawn from the grader's seed: 1 to 3
    leading axes, r from 1 to 8 (r = 1 too), alpha 1, 2r or 16, float32 and float64."""
    for i in range(5):
        lead = tuple(int(n) for n in rng.integers(1, 4, size=int(rng.integers(1, 4))))
        d_in, d_out, r = int(rng.integers(2, 9)), int(rng.integers(2, 9)), int(rng.integers(1, 9))
        dtype = (np.float64, np.float32)[i % 2]
        args = _case(int(rng.integers(1 << 30)), lead, d_in, d_out, r, dtype)
        tol = (1e-4, 1e-4) if dtype == np.float32 else (1e-9, 1e-12)
        for check in (check_forward, check_backward, check_merge):
            check(sol, *args, tol=tol)


CHECKS = [
    ("forward: y of a (2, 3, 4) input, r = 2", _fixed(check_forward, 1, (2, 3), 4, 5, 2)),
    ("backward: dx, dA, dB (W frozen, dx through both paths)", _fixed(check_backward, 2, (2, 3), 4, 5, 2)),
    ("merge: one weight that gives the same y", _fixed(check_merge, 3, (3,), 6, 4, 3)),
    ("held out: other shapes, ranks and alphas, float32 and float64", held_out),
]
