"""Exercise: Hinton's knowledge-distillation loss with temperature, and its gradient.

Reference: ``minidist.distill.kd_loss`` (minidist/distill/losses.py), a fused op whose
backward is written beside its forward.
"""
from __future__ import annotations

import numpy as np

from ..distill import kd_loss as minidist_kd_loss
from ..tensor import Tensor
from .grading import Wrong, as_array, compare, expected_got, matches, on_case

NAME = "kd_loss"
TOPIC = "distillation"
TITLE = "Distillation loss α·T²·KL + (1-α)·CE and its gradient"
NOTEBOOK = "08_distillation"
FUNCTIONS = ("kd_loss",)
# minidist's distillation loss, its engine's cross-entropy/softmax, other libraries' (a helper of the
# student's called log_softmax is theirs: hint 2 suggests one)
FORBIDDEN = ("minidist.distill", "minidist.functional", "minidist.ops", "minidist.tensor", "minidist.nn",
             "scipy.special", "torch", "jax")

STUB = '''"""Soft-target knowledge distillation (Hinton, Vinyals & Dean 2015, §2).

A student learns from a teacher's output distribution softened by a temperature T:

    p = softmax(z_t / T)           teacher, softened           (rows: positions)
    q = softmax(z_s / T)           student, softened
    KL = mean over positions of  sum_v p_v (log p_v - log q_v)       = KL(p || q)
    CE = mean over positions of  -log softmax(z_s)[y]                 (at T = 1)
    loss = alpha * T**2 * KL + (1 - alpha) * CE

Why T**2: the soft part's gradient is (q - p) / T per logit, so it shrinks like 1/T² as
T grows; multiplying by T² keeps it on the same scale as the hard part (§2 of the paper).

Write ``kd_loss(student_logits, teacher_logits, targets, T, alpha)``:
student_logits, teacher_logits are float arrays (N, V), targets ints (N,). Return the
tuple ``(loss, grad)``: the loss as a float and its gradient with respect to
student_logits, shape (N, V):

    grad = [alpha * T * (q - p) + (1 - alpha) * (softmax(z_s) - onehot(y))] / N

N and V are any sizes; the logits may be float32 or float64, and LARGE: a row may sit
around +-1000 (only differences between logits matter to a softmax). So subtract each row's
max before exp, and take logs as (z - max) - log(sum(exp(z - max))), never log(softmax): a
result with NaN or inf fails. T > 0 and 0 <= alpha <= 1 are any numbers. The grader also
tries sizes, dtypes, temperatures and logits of its own, drawn from the seed it prints.

NumPy only. Not allowed (the grader looks at what your code calls or imports):
minidist.distill, minidist's engine (minidist.functional, minidist.ops, minidist.tensor,
minidist.nn), scipy.special, torch, jax. Helpers of your own may have any name (a
``log_softmax`` or ``softmax`` of your own is fine).
"""
import numpy as np


def kd_loss(student_logits, teacher_logits, targets, T, alpha):
    raise NotImplementedError
'''

HINTS = [
    "def softmax(z): e = np.exp(z - z.max(1, keepdims=True)); return e / e.sum(1, keepdims=True)",
    "log q = log_softmax(z_s / T): (z - max) - log(sum(exp(z - max))).",
    "The KL's direction is KL(teacher || student): weights p (the teacher's), logs of p minus logs of q.",
    "Check T = 1, alpha = 1 (plain KL) and alpha = 0 (plain cross-entropy) first.",
]


def reference():
    class Reference:
        @staticmethod
        def kd_loss(student_logits, teacher_logits, targets, T, alpha):
            z = Tensor(np.array(student_logits, dtype=np.float64), requires_grad=True)
            loss = minidist_kd_loss(z, np.asarray(teacher_logits, dtype=np.float64), np.asarray(targets), T, alpha)
            loss.backward()
            return float(loss.data), z.grad
    return Reference


def _softmax(z):
    e = np.exp(z - z.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


def _model(zs, zt, y, T, a, power=2, grad_power=1, reverse=False, soften_teacher=True, per_n=True):
    """The loss and gradient with one typical mistake switched on (for naming it)."""
    n = zs.shape[0]
    p = _softmax(zt / T if soften_teacher else zt)
    q = _softmax(zs / T)
    kl = np.sum(q * (np.log(q) - np.log(p))) if reverse else np.sum(p * (np.log(p) - np.log(q)))
    ce = -np.sum(np.log(_softmax(zs)[np.arange(n), y]))
    div = n if per_n else 1
    onehot = np.eye(zs.shape[1])[y]
    grad = (a * T ** grad_power * (q - p) + (1 - a) * (_softmax(zs) - onehot)) / div
    return (a * T ** power * kl + (1 - a) * ce) / div, grad


LOSS_MISTAKES = [
    ({"power": 0}, "your soft part lacks the factor T²: loss = alpha * T**2 * KL + (1 - alpha) * CE"),
    ({"power": 1}, "your soft part is multiplied by T, not T²"),
    ({"reverse": True}, "you computed KL(student || teacher); distillation uses KL(p_teacher || q_student): "
                        "weights from the teacher"),
    ({"soften_teacher": False}, "you did not soften the teacher: p = softmax(z_t / T), at the same T as the student"),
    ({"per_n": False}, "you summed over positions instead of averaging: divide by N"),
]
GRAD_MISTAKES = [
    ({"grad_power": 2}, "your soft gradient is multiplied by T²; the T² of the loss meets the 1/T of the "
                        "softmax(z/T) derivative: the gradient carries alpha * T * (q - p)"),
    ({"grad_power": 0}, "your soft gradient lacks the factor T: alpha * T * (q - p)"),
    ({"per_n": False}, "your gradient is not divided by N: the loss is a mean over positions"),
    ({"soften_teacher": False}, "your gradient uses an unsoftened teacher: p = softmax(z_t / T)"),
]


def _data(seed, n=6, v=7, offset=0.0, dtype=np.float64):
    rng = np.random.default_rng(seed)
    shift = offset * rng.choice([-1.0, 1.0], size=(n, 1)) if offset else 0.0     # whole rows around +-offset
    return ((rng.normal(size=(n, v)) * 2 + shift).astype(dtype), (rng.normal(size=(n, v)) * 3 + shift).astype(dtype),
            rng.integers(0, v, n))


STABILITY = ("exp overflows (or underflows to 0/0) without the max subtraction the statement asks for: "
             "softmax(z) = softmax(z - max(z)) row by row, and log softmax(z) = (z - max) - log(sum(exp(z - max))) "
             "— never np.log of a softmax")


def _run(sol, T, alpha, seed, what, data=None, tol=1e-9):
    zs, zt, y = data if data is not None else _data(seed)
    with on_case(sol, f"{what} (logits of shape {zs.shape}, {zs.dtype})"):
        out = sol.kd_loss(zs.copy(), zt.copy(), y.copy(), T, alpha)
    if not isinstance(out, (tuple, list)) or len(out) != 2:
        raise Wrong(f"{what}: return the tuple (loss, grad), got {type(out).__name__}")
    zs, zt = zs.astype(np.float64), zt.astype(np.float64)
    want_loss, want_grad = reference().kd_loss(zs, zt, y, T, alpha)
    try:
        loss = float(out[0])
    except (TypeError, ValueError):
        raise Wrong(f"{what}: the loss must be a number, got {type(out[0]).__name__}") from None
    grad = as_array(out[1], f"{what}: grad")
    big = float(np.abs(zs).max())
    if (not np.isfinite(loss) or not np.isfinite(grad).all()) and big > 80:
        raise Wrong(f"{what}: numerical stability — with logits up to {big:.0f} your "
                    f"{'loss is ' + repr(loss) if not np.isfinite(loss) else 'grad holds NaN or inf'}: {STABILITY}.")
    if abs(loss - want_loss) > tol * max(1.0, abs(want_loss)):
        with np.errstate(all="ignore"):
            why = next((t for kw, t in LOSS_MISTAKES
                        if np.isclose(loss, _model(zs, zt, y, T, alpha, **kw)[0], rtol=max(tol, 1e-9))), "")
        raise Wrong(f"{what}: loss {expected_got(want_loss, loss)}" + (f" — y{why[1:]}" if why else ""))
    try:
        compare(grad, want_grad, f"{what}: grad", rtol=max(tol, 1e-7), atol=1e-12 if tol < 1e-6 else 1e-6)
    except Wrong as exc:
        with np.errstate(all="ignore"):
            why = next((t for kw, t in GRAD_MISTAKES
                        if matches(grad, _model(zs, zt, y, T, alpha, **kw)[1], max(tol, 1e-7), 1e-12)), "")
        raise Wrong(f"{exc}" + (f"\nY{why[1:]}." if why else "")) from None


def _check(T, alpha, seed, what):
    return lambda sol: _run(sol, T, alpha, seed, what)


def held_out(sol, rng):
    """N and V of the grader's, float64 and float32, T from 0.5 to 5, any alpha; rows of logits
    around +-1000 (a softmax must subtract the max)."""
    for i, offset in enumerate((0.0, float(rng.uniform(100, 200)), float(rng.uniform(800, 3000)))):
        dtype = (np.float64, np.float32, np.float64)[i]        # float32's exp overflows above 88
        n, v = int(rng.integers(1, 9)), int(rng.integers(2, 12))
        T, alpha = float(rng.uniform(0.5, 5)), float(rng.choice([0.0, 1.0, rng.uniform(0, 1)]))
        what = f"N = {n}, V = {v}, {np.dtype(dtype)}, T = {T:.3g}, alpha = {alpha:.3g}" + \
            (f", rows of logits around ±{offset:.0f}" if offset else "")
        _run(sol, T, alpha, 0, what, _data(int(rng.integers(1 << 30)), n, v, offset, dtype),
             tol=1e-3 if dtype == np.float32 else 1e-9)


CHECKS = [
    ("alpha = 0 is plain cross-entropy", _check(1.0, 0.0, 0, "alpha = 0")),
    ("T = 1, alpha = 1 is plain KL(teacher || student)", _check(1.0, 1.0, 1, "T = 1, alpha = 1")),
    ("T = 4, alpha = 1: the soft part is scaled by T²", _check(4.0, 1.0, 2, "T = 4, alpha = 1")),
    ("T = 2, alpha = 0.3: both parts", _check(2.0, 0.3, 3, "T = 2, alpha = 0.3")),
    ("T = 0.5, alpha = 0.9: a sharpening temperature", _check(0.5, 0.9, 4, "T = 0.5, alpha = 0.9")),
    ("held out: other sizes, float32, temperatures, and logits around ±1000 (numerical stability)", held_out),
]
