"""Exercise: Adam's update with bias correction, plugged into minidist's optimizer and a real GPT.

Reference: ``minidist.optim.Adam.update`` (minidist/optim.py).
"""
from __future__ import annotations

import numpy as np

from .. import optim
from ..model import GPT, GPTConfig
from .grading import Wrong, compare, diagnose, on_case, shapes

NAME = "adam_bias_correction"
TOPIC = "optimizers"
TITLE = "Adam with bias correction, one step on arrays"
NOTEBOOK = "01_autograd_and_memory"
FUNCTIONS = ("adam_step",)
FORBIDDEN = ("minidist.optim", "torch", "optax")     # optimizers that would do the step

STUB = '''"""Adam (Kingma & Ba 2015, Algorithm 1) — the optimizer whose two moments are most of
ZeRO's K = 12 bytes per parameter.

Write ``adam_step(param, grad, m, v, t, lr=1e-3, betas=(0.9, 0.999), eps=1e-8)``. It
updates the arrays ``param``, ``m`` and ``v`` IN PLACE (``param -= ...``, ``m[...] = ...``)
and returns nothing. ``t`` is the number of this step, starting at 1.

    m = beta1 * m + (1 - beta1) * grad             first moment
    v = beta2 * v + (1 - beta2) * grad**2          second moment
    m_hat = m / (1 - beta1**t)                     bias corrections: m and v start at 0,
    v_hat = v / (1 - beta2**t)                     so early averages are too small
    param = param - lr * m_hat / (sqrt(v_hat) + eps)

Without the corrections the first step would move each weight by about
lr * (1 - beta1) / sqrt(1 - beta2) ≈ 3.2 * lr instead of lr. minidist runs your function
as the update of its Adam optimizer while training a tiny GPT.

The arrays may have any shape (1 to 4 axes) and be float32 or float64; they must keep
their dtype (an in-place update does). The grader also tries shapes, dtypes and
hyper-parameters of its own, drawn from the seed it prints.

Not allowed (the grader looks at what your code calls or imports): minidist.optim, torch,
optax. Helpers of your own may have any name.
"""
import numpy as np


def adam_step(param, grad, m, v, t, lr=1e-3, betas=(0.9, 0.999), eps=1e-8):
    raise NotImplementedError
'''

HINTS = [
    "In place: m *= beta1; m += (1 - beta1) * grad — a plain `m = ...` only rebinds your local name.",
    "t starts at 1, so 1 - beta1**t is never zero.",
    "eps goes outside the square root: np.sqrt(v_hat) + eps.",
]


def reference():
    class Reference:
        @staticmethod
        def adam_step(param, grad, m, v, t, lr=1e-3, betas=(0.9, 0.999), eps=1e-8):
            state = {"step": t - 1, "exp_avg": m, "exp_avg_sq": v}
            group = {"lr": lr, "betas": betas, "eps": eps, "weight_decay": 0.0}
            optim.Adam([np.zeros(1)], **{k: group[k] for k in ("lr", "betas", "eps")}).update(param, grad, state, group)
    return Reference


def _model(p, g, m, v, t, lr, b1, b2, eps, corr1=True, corr2=True, eps_in=False, t_shift=0, square=True):
    m = b1 * m + (1 - b1) * g
    v = b2 * v + (1 - b2) * (g * g if square else np.abs(g))
    tt = t + t_shift
    mh = m / (1 - b1 ** tt) if corr1 else m
    vh = v / (1 - b2 ** tt) if corr2 else v
    den = np.sqrt(vh + eps) if eps_in else np.sqrt(vh) + eps
    return p - lr * mh / den


def _mistake(**kw):
    return lambda p, g, m, v, t, lr, b1, b2, eps: _model(p, g, m, v, t, lr, b1, b2, eps, **kw)


T_MINUS_ONE = ("your bias corrections use t - 1: at step t = 1 that divides by 1 - beta**0 = 0, hence NaN or inf. "
               "t is already the number of this step (1, 2, …): use beta1**t and beta2**t")
MISTAKES = [
    (_mistake(corr1=False, corr2=False), "you skip both bias corrections: divide m by (1 - beta1**t) and v by "
                                         "(1 - beta2**t)"),
    (_mistake(corr1=False), "you correct v but not m: m_hat = m / (1 - beta1**t)"),
    (_mistake(corr2=False), "you correct m but not v: v_hat = v / (1 - beta2**t)"),
    (_mistake(t_shift=1), "your bias corrections use t + 1: t is already the number of this step (1, 2, …)"),
    (_mistake(t_shift=-1), T_MINUS_ONE),
    (_mistake(eps_in=True), "you put eps inside the square root: sqrt(v_hat) + eps"),
    (_mistake(square=False), "your second moment averages |grad|, not grad**2"),
]


def _arrays(seed, n=6):
    rng = np.random.default_rng(seed)
    return rng.normal(size=n), [rng.normal(size=n) * 10.0 ** rng.integers(-3, 1) for _ in range(4)]


def _steps(sol, hyper, what, arrays=None):
    param, grads = arrays if arrays is not None else _arrays(0)
    mine = [param.copy(), np.zeros_like(param), np.zeros_like(param)]
    ref = [param.copy(), np.zeros_like(param), np.zeros_like(param)]
    lr, (b1, b2), eps = hyper["lr"], hyper["betas"], hyper["eps"]
    tol = {"rtol": 1e-4, "atol": 1e-7} if param.dtype == np.float32 else {"rtol": 1e-7, "atol": 1e-12}
    for t, g in enumerate(grads, start=1):
        before = [a.copy() for a in mine]
        with on_case(sol, f"{what}: step {t}"):
            out = sol.adam_step(mine[0], g.copy(), mine[1], mine[2], t, **hyper)
        reference().adam_step(ref[0], g.copy(), ref[1], ref[2], t, **hyper)
        if out is not None and np.shape(out) == param.shape and np.allclose(mine[0], before[0]):
            raise Wrong("adam_step returned a new parameter array but left `param` unchanged: update it in place "
                        "(param -= ...), the optimizer keeps using the same array")
        for name, i in (("m", 1), ("v", 2)):
            if np.array_equal(mine[i], before[i]) and not np.array_equal(ref[i], before[i]):
                raise Wrong(f"{what}: step {t}: `{name}` did not change: update it in place ({name} *= beta; "
                            f"{name} += ...), a plain `{name} = ...` only rebinds a local name")
        for name, a in (("param", mine[0]), ("m", mine[1]), ("v", mine[2])):
            if a.dtype != param.dtype:
                raise Wrong(f"{what}: `{name}` became {a.dtype}; it was {param.dtype}: update the arrays in place, "
                            f"which keeps their dtype")
        try:
            compare(mine[0], ref[0], f"{what}: param after step {t}", **tol)
        except Wrong as exc:
            args = [a.astype(np.float64) for a in (before[0], g, before[1], before[2])]
            why = diagnose(mine[0], MISTAKES, *args, t, lr, b1, b2, eps, **tol)
            if not why and not np.isfinite(mine[0]).all() and t == 1:
                why = T_MINUS_ONE
            with np.errstate(all="ignore"):
                ratio = (before[0] - mine[0]) / (before[0] - ref[0])
            extra = f"\nY{why[1:]}." if why else (f"\nYour step is {np.median(ratio):.3g}× Adam's."
                                                  if np.all(np.isfinite(ratio)) else "")
            raise Wrong(f"{exc}{extra}") from None
        for name, i in (("m", 1), ("v", 2)):
            compare(mine[i], ref[i], f"{what}: {name} after step {t}", rtol=tol["rtol"], atol=1e-15)


def held_out(sol, rng):
    """Arrays of 1 to 4 axes, float64 and float32, hyper-parameters of the grader's."""
    for i, shape in enumerate(shapes(rng, 4, 1, 4, size=(1, 5))):
        dtype = (np.float64, np.float32)[i % 2]
        param = rng.normal(size=shape).astype(dtype)
        grads = [(rng.normal(size=shape) * 10.0 ** rng.integers(-3, 1)).astype(dtype) for _ in range(4)]
        hyper = {"lr": float(10 ** rng.uniform(-3, -1)), "betas": (float(rng.uniform(0.5, 0.95)),
                                                                    float(rng.uniform(0.9, 0.9999))),
                 "eps": float(10 ** rng.uniform(-8, -3))}
        what = (f"{np.dtype(dtype)} arrays of shape {shape}, lr = {hyper['lr']:.3g}, betas = "
                f"({hyper['betas'][0]:.3g}, {hyper['betas'][1]:.4g}), eps = {hyper['eps']:.2g}")
        _steps(sol, hyper, what, (param, grads))


def _check(hyper, what):
    full = {"lr": 1e-3, "betas": (0.9, 0.999), "eps": 1e-8, **hyper}
    return lambda sol: _steps(sol, full, what)


class _StudentAdam(optim.Adam):
    """minidist's Adam with its update replaced by the student's function."""

    def __init__(self, params, fn, **hyper):
        super().__init__(params, **hyper)
        self.fn = fn

    def update(self, param, grad, state, group):
        state["step"] += 1
        self.fn(param, grad, state["exp_avg"], state["exp_avg_sq"], state["step"],
                lr=group["lr"], betas=group["betas"], eps=group["eps"])


def check_gpt(sol):
    cfg = GPTConfig(block_size=8, vocab_size=11, n_layer=1, n_head=2, n_embd=8)
    models = [GPT(cfg, seed=0, dtype=np.float64) for _ in range(2)]
    opts = [optim.Adam(models[0].parameters(), lr=1e-2), _StudentAdam(models[1].parameters(), sol.adam_step, lr=1e-2)]
    idx = np.random.default_rng(0).integers(0, 11, (3, 4, 8))
    for step in range(3):
        for model, opt in zip(models, opts):
            model(idx[step], idx[step])[1].backward()
            opt.step()
            opt.zero_grad()
        for (name, a), b in zip(models[0].named_parameters(), models[1].parameters()):
            compare(b.data, a.data, f"tiny GPT trained with your Adam, step {step + 1}: {name}", rtol=1e-7, atol=1e-12)


CHECKS = [
    ("4 steps with the default hyper-parameters", _check({}, "default betas")),
    ("4 steps with betas = (0.5, 0.9), lr = 0.1, eps = 1e-3", _check({"lr": 0.1, "betas": (0.5, 0.9), "eps": 1e-3},
                                                                      "betas (0.5, 0.9)")),
    ("held out: arrays of 1 to 4 axes, float32 and float64, the grader's hyper-parameters", held_out),
    ("3 training steps of a tiny GPT equal minidist's Adam", check_gpt),
]
