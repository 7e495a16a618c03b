"""Exercise: symmetric and asymmetric INT8 quantization of a tensor, exactly.

Reference: ``minidist.compression.quantize.quantize(x, 8, "symmetric" | "asymmetric", "tensor")``
(minidist/compression/quantize.py), whose docstring states the conventions.
"""
from __future__ import annotations

import numpy as np

from ..compression.quantize import quantize
from .grading import Wrong, as_array, expected_got, on_case

NAME = "int8_quantization"
TOPIC = "compression"
TITLE = "INT8 quantization, symmetric and asymmetric: scale, zero point, round half to even"
NOTEBOOK = "11_inference_and_compression"
FUNCTIONS = ("quantize_symmetric", "quantize_asymmetric")
FORBIDDEN = ("minidist.compression", "torch", "jax")

STUB = '''"""INT8 quantization of a whole tensor (Jacob et al. 2018, §2): x ≈ scale · (q − zero_point).

Write two functions; ``x`` is a float array of any shape (float32 or float64):

``quantize_symmetric(x) -> (q, scale)``
    zero point 0, codes q in [-127, 127] (-128 is left out so the range is symmetric):
        scale = max|x| / 127
        q     = clamp(round(x / scale), -127, 127)

``quantize_asymmetric(x) -> (q, scale, zero_point)``
    codes q in [-128, 127]. First widen the range [min(x), max(x)] to include 0 (so that
    0.0 is exactly representable), then
        scale      = (max - min) / 255                      (2^8 - 1 steps)
        zero_point = clamp(-128 - round(min / scale), -128, 127)   an integer
        q          = clamp(round(x / scale) + zero_point, -128, 127)

The exact conventions (the grader compares q, scale and zero_point exactly):

* round(...) is round half to EVEN: 2.5 -> 2, 3.5 -> 4, -2.5 -> -2 (np.rint does this;
  Python's round too). Clamp after rounding.
* the scale is a float32 number: compute it in float64 from the float64 values of x, then
  round it to float32, e.g. ``scale = np.float32(np.abs(x.astype(np.float64)).max() / 127)``;
  x / scale is then computed in float64 with that float32 scale.
* an all-zero x gets scale 1.0.
* q is returned as an integer array (np.int8) of x's shape; scale as a number; zero_point
  as an int.

Example: x = [-1.0, 0.5, 3.0] → symmetric: scale = float32(3/127), q = [-42, 21, 127].

NumPy only. Not allowed (the grader looks at what your code calls or imports):
minidist.compression, torch, jax.
"""
import numpy as np


def quantize_symmetric(x):
    raise NotImplementedError


def quantize_asymmetric(x):
    raise NotImplementedError
'''

HINTS = [
    "x64 = np.asarray(x, dtype=np.float64); amax = np.abs(x64).max(); scale = np.float32(amax / 127) or np.float32(1).",
    "np.rint rounds half to even; int(v + 0.5) and np.floor(v + 0.5) round half UP, .astype(int) truncates.",
    "Asymmetric: lo = min(x64.min(), 0.0), hi = max(x64.max(), 0.0); scale from (hi - lo) / 255.",
    "The zero point is where 0.0 lands: q(0) = zero_point; with q(lo) = -128 that gives -128 - round(lo / scale).",
]


def reference():
    class Reference:
        @staticmethod
        def quantize_symmetric(x):
            t = quantize(np.asarray(x), 8, "symmetric", "tensor")
            return t.q, t.scale

        @staticmethod
        def quantize_asymmetric(x):
            t = quantize(np.asarray(x), 8, "asymmetric", "tensor")
            return t.q, t.scale, int(t.zero_point)
    return Reference


# -- typical mistakes, each a complete wrong implementation (to recognise a student's result) -----------
def _round(v, how):
    return {"even": np.rint, "trunc": np.trunc, "half_up": lambda a: np.floor(a + 0.5),
            "away": lambda a: np.sign(a) * np.floor(np.abs(a) + 0.5)}[how](v)


def _sym(x, how="even", qmax=127, use_abs=True, levels=127):
    x = np.asarray(x, np.float64)
    amax = np.abs(x).max() if use_abs else x.max()
    s = float(np.float32(amax / levels)) or 1.0
    return np.clip(_round(x / s, how), -qmax - (levels == 128), qmax), s


def _asym(x, how="even", widen=True, steps=255, zp_rule="right"):
    x = np.asarray(x, np.float64)
    lo, hi = (min(x.min(), 0.0), max(x.max(), 0.0)) if widen else (x.min(), x.max())
    s = float(np.float32((hi - lo) / steps)) or 1.0
    if zp_rule == "uint8":                                         # [0, 255] range of PyTorch's quint8
        z = -_round(lo / s, how)
        return np.clip(_round(x / s, how) + z, 0, 255), s, z
    if zp_rule == "float":                                         # zero point not rounded before use
        z = -128 - lo / s
        return np.clip(_round(x / s + z, how), -128, 127), s, z
    z = {"right": -128 - _round(lo / s, how), "sign": -128 + _round(lo / s, how)}[zp_rule]
    z = float(np.clip(z, -128, 127))
    return np.clip(_round(x / s, how) + z, -128, 127), s, z


ROUNDING = [({"how": "trunc"}, "you truncated toward zero (astype(int) / np.trunc): round to nearest"),
            ({"how": "half_up"}, "exact ties round half UP in your code (floor(v + 0.5)); the convention is half "
                                 "to EVEN: 2.5 -> 2, -2.5 -> -2 (np.rint)"),
            ({"how": "away"}, "exact ties round half AWAY from zero in your code (np.round of C, Python 2); the "
                              "convention is half to EVEN: 2.5 -> 2, -2.5 -> -2 (np.rint)")]
SYM_MISTAKES = ROUNDING + [
    ({"levels": 128}, "your scale is max|x| / 128: symmetric INT8 uses 127 levels each side, scale = max|x| / 127 "
                      "(q in [-127, 127])"),
    ({"use_abs": False}, "your scale comes from max(x), not max|x|: a tensor whose largest magnitude is negative "
                         "then overflows the range"),
]
ASYM_MISTAKES = ROUNDING + [
    ({"zp_rule": "sign"}, "your zero point has the wrong sign: zero_point = -128 - round(min / scale) (min <= 0, "
                          "so the zero point sits above -128)"),
    ({"zp_rule": "uint8"}, "you used the unsigned range [0, 255] (zero_point = -round(min / scale)); here q is "
                           "signed, in [-128, 127]: zero_point = -128 - round(min / scale)"),
    ({"zp_rule": "float"}, "your zero point is not an integer (or is rounded together with x / scale): round it "
                           "on its own, zero_point = -128 - round(min / scale), then q = round(x / scale) + zero_point"),
    ({"widen": False}, "you did not widen [min, max] to include 0: with an all-positive (or all-negative) x, "
                       "0.0 must still be representable: min = min(min(x), 0), max = max(max(x), 0)"),
    ({"steps": 256}, "your scale divides by 256: 8 bits give 2^8 - 1 = 255 steps between min and max"),
]


def _why(got, mistakes, fn, x, index):
    with np.errstate(all="ignore"):
        for kw, text in mistakes:
            try:
                if np.array_equal(np.asarray(got, np.float64), np.asarray(fn(x, **kw)[index], np.float64)):
                    return f" — {text}"
            except (ValueError, ZeroDivisionError):
                continue
    return ""


def _number(v, what):
    try:
        return float(np.asarray(v).reshape(()))
    except (TypeError, ValueError):
        raise Wrong(f"{what} must be one number, got {type(v).__name__} {np.shape(v)}") from None


def _compare_q(q, want_q, x, what, mistakes, fn):
    q = as_array(q, f"{what}: q")
    if q.shape != x.shape:
        raise Wrong(f"{what}: q has shape {q.shape}, x has {x.shape}: return one code per element")
    if not np.array_equal(q, want_q):
        i = int(np.flatnonzero(q.reshape(-1) != want_q.reshape(-1))[0])
        raise Wrong(f"{what}: x = {float(x.reshape(-1)[i])!r} → q {expected_got(want_q.reshape(-1)[i], q.reshape(-1)[i])}"
                    f" ({int((q != want_q).sum())} of {q.size} codes wrong)" + _why(q, mistakes, fn, x, 0))


def _run_sym(sol, x, what):
    with on_case(sol, what):
        out = sol.quantize_symmetric(x.copy())
    if not isinstance(out, (tuple, list)) or len(out) != 2:
        raise Wrong(f"{what}: quantize_symmetric returns the tuple (q, scale), got {type(out).__name__}")
    want_q, want_s = reference().quantize_symmetric(x)
    s = _number(out[1], f"{what}: scale")
    if s != float(want_s) and not np.isclose(s, float(want_s), rtol=1e-6, atol=0):
        raise Wrong(f"{what}: scale {expected_got(float(want_s), s)}" + _why(s, SYM_MISTAKES, _sym, x, 1))
    _compare_q(out[0], want_q, x, what, SYM_MISTAKES, _sym)


def _run_asym(sol, x, what):
    with on_case(sol, what):
        out = sol.quantize_asymmetric(x.copy())
    if not isinstance(out, (tuple, list)) or len(out) != 3:
        raise Wrong(f"{what}: quantize_asymmetric returns the tuple (q, scale, zero_point), got {type(out).__name__}")
    want_q, want_s, want_z = reference().quantize_asymmetric(x)
    s = _number(out[1], f"{what}: scale")
    if not np.isclose(s, float(want_s), rtol=1e-6, atol=0):
        raise Wrong(f"{what}: scale {expected_got(float(want_s), s)}" + _why(s, ASYM_MISTAKES, _asym, x, 1))
    z = _number(out[2], f"{what}: zero_point")
    if z != want_z:
        raise Wrong(f"{what}: zero_point {expected_got(want_z, z)} (x from {float(x.min())!r} to {float(x.max())!r})"
                    + _why(z, ASYM_MISTAKES, _asym, x, 2))
    _compare_q(out[0], want_q, x, what, ASYM_MISTAKES, _asym)


T = 1 / 16              # scale of the tie checks: max|x| = 127/16 (symmetric), an exact power of two
TIES = np.array([0.5, 1.5, 2.5, -0.5, -1.5, -2.5, 100.5, -126.5, 127.0], np.float32) * T
ASYM_TIES = (np.array([-128.0, -3.5, -2.5, 0.5, 1.5, 126.5, 127.0]) * T).astype(np.float32)   # hi − lo = 255/16


def _values(fn, x, what):
    x = np.asarray(x, np.float32)
    return lambda sol: fn(sol, x, what)


def held_out(sol, rng):
    """Shapes, dtypes and ranges of the grader's: centred, shifted, all positive, all negative."""
    for i in range(8):
        shape = tuple(int(v) for v in rng.integers(1, 9, size=int(rng.integers(1, 4))))
        dtype = (np.float32, np.float64)[i % 2]
        shift = [0.0, 2.0, 5.0, -5.0][i % 4] * float(rng.uniform(0.5, 2))
        x = (rng.normal(size=shape) * float(rng.uniform(0.01, 10)) + shift).astype(dtype)
        what = f"x of shape {shape}, {np.dtype(dtype)}, from {float(x.min()):.3g} to {float(x.max()):.3g}"
        _run_sym(sol, x, f"symmetric, {what}")
        _run_asym(sol, x, f"asymmetric, {what}")


CHECKS = [
    ("symmetric: scale = max|x| / 127", _values(_run_sym, [-1.0, 0.5, 3.0, 0.25], "x = [-1, 0.5, 3, 0.25]")),
    ("symmetric: exact ties round half to even", _values(_run_sym, TIES, "ties (scale exactly 1/16)")),
    ("symmetric: the largest magnitude is negative", _values(_run_sym, [-4.0, 1.0, 2.5, -0.3], "x = [-4, 1, 2.5, -0.3]")),
    ("asymmetric: scale and zero point", _values(_run_asym, [-1.0, 0.5, 3.0, 0.25], "x = [-1, 0.5, 3, 0.25]")),
    ("asymmetric: exact ties round half to even", _values(_run_asym, ASYM_TIES, "ties (scale exactly 1/16)")),
    ("asymmetric: an all-positive x still represents 0", _values(_run_asym, [0.5, 1.0, 2.0, 4.0], "x = [0.5, 1, 2, 4]")),
    ("an all-zero x gets scale 1.0 (no division by a zero range)",
     lambda sol: (_run_sym(sol, np.zeros(3, np.float32), "symmetric, an all-zero x = [0, 0, 0]"),
                  _run_asym(sol, np.zeros(3, np.float32), "asymmetric, an all-zero x = [0, 0, 0]"))),
    ("held out: shapes, float32/float64, shifted and one-signed tensors", held_out),
]
