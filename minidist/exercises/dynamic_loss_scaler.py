"""Exercise: DeepSpeed's dynamic loss scaler (overflow -> skip and back off; a clean window -> grow;
hysteresis). Reference: ``minidist.precision.DynamicLossScaler`` (minidist/precision/loss_scaler.py).
"""
from __future__ import annotations

import numpy as np

from ..precision.loss_scaler import DynamicLossScaler
from .grading import Wrong

NAME = "dynamic_loss_scaler"
TOPIC = "mixed precision"
TITLE = "Dynamic loss scaling with DeepSpeed's window and hysteresis"
NOTEBOOK = "04_mixed_precision"
FUNCTIONS = ("LossScaler",)
FORBIDDEN = ("minidist.precision", "deepspeed", "torch")     # loss scalers that would do the work

STUB = '''"""DeepSpeed's dynamic loss scaler (deepspeed/runtime/fp16/loss_scaler.py).

fp16 gradients underflow unless the loss is multiplied by a scale S before backward
(Micikevicius et al. 2018). Too large an S overflows (inf/NaN gradients): then the step
is skipped and S shrinks. After ``scale_window`` clean iterations S grows again.

Write the class ``LossScaler`` with

* ``__init__(self, init_scale, scale_factor=2.0, scale_window=1000, min_scale=1.0,
  delayed_shift=1)``;
* ``loss_scale``: an attribute (or property) — the scale the CURRENT iteration uses;
* ``update_scale(self, overflow)``: called once per iteration, after backward, with
  whether that iteration's gradients overflowed.

DeepSpeed's rules, with ``cur_iter`` (starts at 0), ``last_overflow_iter`` (starts at -1)
and ``cur_hysteresis`` (starts at delayed_shift):

* overflow: if delayed_shift == 1 or cur_hysteresis == 1, the scale backs off:
  scale = max(scale / scale_factor, min_scale); otherwise spend one unit of hysteresis
  (cur_hysteresis -= 1) and keep the scale. Either way last_overflow_iter = cur_iter.
* no overflow: if (cur_iter - last_overflow_iter) % scale_window == 0, the scale grows:
  scale *= scale_factor, and the hysteresis budget is refilled (cur_hysteresis = delayed_shift).
* after either case: cur_iter += 1.

So with scale_window = 3 and no overflow the scale doubles after iterations 2, 5, 8, …;
with delayed_shift = 2 the first overflow only spends hysteresis, the second halves S.
The scale is any positive number, not only a power of scale_factor: with init_scale = 12,
scale_factor = 2 and min_scale = 2, overflows take it to 6, 3, then max(1.5, 2) = 2.

The grader also tries settings and overflow patterns of its own, drawn from the seed it
prints. Not allowed (the grader looks at what your code calls or imports):
minidist.precision, deepspeed, torch. Helpers of your own may have any name.
"""


class LossScaler:
    def __init__(self, init_scale, scale_factor=2.0, scale_window=1000, min_scale=1.0, delayed_shift=1):
        raise NotImplementedError

    def update_scale(self, overflow):
        raise NotImplementedError
'''

HINTS = [
    "Keep four numbers: loss_scale, cur_iter, last_overflow_iter and cur_hysteresis.",
    "The window counts from the last overflow, not from iteration 0: (cur_iter - last_overflow_iter) % scale_window.",
    "Hysteresis is refilled only when the scale grows (a whole clean window), not after every clean step.",
    "cur_iter += 1 comes last, after the overflow / no-overflow branch.",
]


def reference():
    class Reference:
        @staticmethod
        def LossScaler(init_scale, scale_factor=2.0, scale_window=1000, min_scale=1.0, delayed_shift=1):
            return DynamicLossScaler(init_scale, scale_factor, scale_window, min_scale, delayed_shift,
                                     raise_error_at_min_scale=False)
    return Reference


class _Model:
    """DeepSpeed's rules with one typical mistake switched on (used to name the mistake)."""

    def __init__(self, init_scale, scale_factor, scale_window, min_scale, delayed_shift, mistake):
        self.loss_scale, self.f, self.w = float(init_scale), scale_factor, scale_window
        self.min, self.d = min_scale, delayed_shift
        self.it, self.last, self.hyst, self.mistake = 0, -1, delayed_shift, mistake

    def update_scale(self, overflow):
        m = self.mistake
        if overflow:
            if m == "no hysteresis" or self.d == 1 or self.hyst == 1:
                if m == "no floor":
                    self.loss_scale = self.loss_scale / self.f
                elif m == "stop above floor":
                    self.loss_scale = self.loss_scale / self.f if self.loss_scale / self.f >= self.min else self.loss_scale
                else:
                    self.loss_scale = max(self.loss_scale / self.f, self.min)
            else:
                self.hyst -= 1
            if m != "window from start":
                self.last = self.it
        else:
            if m == "refill every clean step":
                self.hyst = self.d
            since = self.it + 1 if m == "window from start" else self.it - self.last
            if m == "window off by one":
                since -= 1
            elif m == "window early":
                since += 1
            if since % self.w == 0 and (m != "window off by one" or since > 0):
                if m != "never refill":
                    self.hyst = self.d
                self.loss_scale *= self.f
        self.it += 1


MISTAKES = {
    "no hysteresis": "you halve the scale on every overflow: with delayed_shift = d, the first d - 1 "
                     "overflows only spend hysteresis (cur_hysteresis -= 1)",
    "window from start": "your window counts from iteration 0: it must restart at the last overflow, "
                         "(cur_iter - last_overflow_iter) % scale_window == 0",
    "never refill": "you never refill the hysteresis budget: set cur_hysteresis = delayed_shift when the scale grows",
    "refill every clean step": "you refill the hysteresis after every clean step (that is DeepSpeed's "
                               "consecutive_hysteresis option, off by default): refill only when the scale grows",
    "no floor": "the scale went below min_scale: back off with max(scale / scale_factor, min_scale)",
    "stop above floor": "a back-off that would go below min_scale keeps the old scale; it must land ON the floor: "
                        "scale = max(scale / scale_factor, min_scale)",
    "window off by one": "your scale grows one iteration late: with last_overflow_iter = -1 the first growth comes "
                         "after iteration scale_window - 1 (cur_iter counts from 0 and is incremented last)",
    "window early": "your scale grows one iteration early: the window is (cur_iter - last_overflow_iter) % "
                    "scale_window == 0 with cur_iter before its increment (the first growth after iteration "
                    "scale_window - 1, not scale_window - 2)",
}


def _trace(make, pattern):
    s = make()
    out = []
    for ovf in pattern:
        out.append(float(s.loss_scale))
        s.update_scale(bool(ovf))
    out.append(float(s.loss_scale))
    return out


RTOL = 1e-9      # scale / f and scale · (1 / f) round differently (f = 1.5, 3): the same scaler


def _close(g: float, w: float) -> bool:
    return abs(g - w) <= RTOL * abs(w)


def _same_trace(got, want) -> bool:
    return len(got) == len(want) and all(_close(g, w) for g, w in zip(got, want))


def _run(sol, kwargs, pattern, what):
    def student():
        return sol.LossScaler(**kwargs)
    got = _trace(student, pattern)
    want = _trace(lambda: reference().LossScaler(**kwargs), pattern)
    if _same_trace(got, want):
        return
    i = next(k for k, (g, w) in enumerate(zip(got, want)) if not _close(g, w))
    flips = [k for k in range(i) if pattern[k]]
    history = f"overflows at iterations {flips}" if flips else "no overflow so far"
    cfg = ", ".join(f"{k}={v}" for k, v in kwargs.items())
    mistake = ""
    full = {"scale_factor": 2.0, "scale_window": 1000, "min_scale": 1.0, "delayed_shift": 1, **kwargs}
    for name, text in MISTAKES.items():
        args = [full[k] for k in ("init_scale", "scale_factor", "scale_window", "min_scale", "delayed_shift")]
        if _same_trace(_trace(lambda a=args, n=name: _Model(*a, n), pattern), got):
            mistake = f"\nThat is the trace of a scaler where {text}."
            break
    step = "after the last update" if i == len(pattern) else f"at iteration {i}"
    raise Wrong(f"{what} ({cfg}): {step} ({history}) the scale should be {want[i]:.10g}, yours is {got[i]:.10g}.\n"
                f"expected scales: {', '.join(f'{v:.10g}' for v in want[:i + 2])}, …\n"
                f"yours:           {', '.join(f'{v:.10g}' for v in got[:i + 2])}, …{mistake}")


def _check(kwargs, pattern, what):
    return lambda sol: _run(sol, kwargs, pattern, what)


def held_out(sol, rng):
    """Settings of the grader's: a scale that is no power of the factor and reaches the floor
    between two values, factors 1.5 to 4, windows 1 to 6, hysteresis 1 to 3, overflow bursts."""
    for _ in range(3):
        factor = float(rng.choice([1.5, 2.0, 3.0, 4.0]))
        min_scale = float(rng.choice([1.0, 2.0, 0.5, 8.0]))
        k, shift = int(rng.integers(1, 4)), int(rng.integers(1, 4))
        init = round(min_scale * factor ** k * float(rng.uniform(1.1, factor - 0.05)), 2)   # no power of the factor
        pattern = [bool(v) for v in rng.random(12) < 0.3] + [True] * (k + 2 * shift + 2) + \
                  [bool(v) for v in rng.random(20) < 0.2]
        kwargs = {"init_scale": init, "scale_factor": factor, "scale_window": int(rng.integers(1, 7)),
                  "min_scale": min_scale, "delayed_shift": shift}
        _run(sol, kwargs, pattern, "held-out settings")


_rng = np.random.default_rng(3)
RANDOM = [bool(v) for v in _rng.random(60) < 0.25]

CHECKS = [
    ("no overflow: the scale doubles every scale_window iterations",
     _check({"init_scale": 2.0 ** 8, "scale_window": 3}, [0] * 10, "no overflow")),
    ("overflow halves the scale (delayed_shift = 1)",
     _check({"init_scale": 2.0 ** 8, "scale_window": 100}, [0, 1, 0, 1, 1, 0], "overflows")),
    ("the window restarts at the last overflow",
     _check({"init_scale": 2.0 ** 8, "scale_window": 4}, [0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0], "window after an overflow")),
    ("hysteresis: delayed_shift = 2 tolerates one overflow",
     _check({"init_scale": 2.0 ** 8, "scale_window": 100, "delayed_shift": 2}, [1, 0, 1, 1, 0], "hysteresis")),
    ("hysteresis is refilled when the scale grows",
     _check({"init_scale": 2.0 ** 8, "scale_window": 2, "delayed_shift": 2}, [1, 0, 0, 0, 1, 0, 0, 1, 1, 0],
            "refill")),
    ("the scale never goes below min_scale",
     _check({"init_scale": 8.0, "scale_window": 100, "min_scale": 2.0}, [1, 1, 1, 1, 0], "floor")),
    ("held out: scales that reach min_scale between two values, other factors, windows and hysteresis",
     held_out),
    ("60 iterations of random overflows (window 4, delayed_shift 3, factor 4)",
     _check({"init_scale": 2.0 ** 16, "scale_factor": 4.0, "scale_window": 4, "delayed_shift": 3, "min_scale": 1.0},
            RANDOM, "random overflows")),
]
