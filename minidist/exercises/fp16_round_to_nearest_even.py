"""Exercise: round float32 values to fp16, round-to-nearest-even, on the bit pattern.

Reference: ``minidist.numerics.quantize(x, "fp16")`` (minidist/numerics/quantize.py).
"""
from __future__ import annotations

import numpy as np

from ..numerics import quantize
from .grading import Wrong, as_array, on_case, shapes

NAME = "fp16_round_to_nearest_even"
TOPIC = "mixed precision"
TITLE = "Round float32 to fp16 (ties to even) with integer operations on the bits"
NOTEBOOK = "04_mixed_precision"
FUNCTIONS = ("round_to_fp16",)
# NumPy's half type under any spelling (np.half is np.float16; dtype strings and struct's "e" are
# resolved too) and minidist's own rounding; a constant of the student's called `half` is theirs
FORBIDDEN = ("numpy.float16", "minidist.numerics", "minidist.precision", "torch")

STUB = '''"""Round float32 values to the nearest fp16 value — what ``x.half()`` does on a GPU.

Write ``round_to_fp16(x)``: ``x`` is a float32 array of any shape (0-D to 4-D); return a
float32 array of the same shape whose every value is exactly representable in IEEE fp16 (1 sign bit, 5 exponent
bits with bias 15, 10 mantissa bits), chosen by **round to nearest, ties to even**
(IEEE 754 §4.3.1). Do not use np.float16 or any half-precision cast: work on the bits.

float32 = 1 sign bit | 8 exponent bits (bias 127) | 23 mantissa bits. fp16 keeps 10
mantissa bits, so for fp16's normal numbers (2**-14 <= |x| <= 65504) rounding means
dropping the low 13 mantissa bits of the float32 pattern ``b = x.view(np.uint32)``:

* round to NEAREST: above halfway round up, below halfway round down (not truncation);
* an exact tie (the dropped bits are exactly 1000...0) goes to the value whose last kept
  bit is 0 ("even"): 1 + 2**-11 is halfway between 1 and 1 + 2**-10 and rounds to 1;
* a carry out of the mantissa (1.111...1 rounding up) bumps the exponent: adding to the
  whole bit pattern does that by itself;
* anything that rounds above 65504 (fp16's largest value) becomes +-inf; inf stays inf,
  NaN stays NaN, the sign of every value (and of zero) is kept;
* below 2**-14, fp16 is subnormal: its grid step is fixed at 2**-24 (the smallest
  subnormal), so fewer mantissa bits survive; round to that grid, ties to even
  (2**-25 rounds to 0, 3 * 2**-25 to 2**-23).

Useful: ``b = x.view(np.uint32)``, ``(b >> 13) & 1``, ``np.uint32(0x1FFF)``,
``y.view(np.float32)``. ``np.rint`` rounds half to even, too. The grader also tries values
and shapes of its own (ties, subnormals, values near 65504), drawn from the seed it prints.

Not allowed (the grader looks at what your code calls or imports): NumPy's half type under
any spelling — np.float16, np.half, x.astype("float16"), dtype "e" or "f2", struct's "e"
format — and minidist.numerics, minidist.precision, torch. Constants and helpers of your own
may have any name (``half = ...`` is fine).
"""
import numpy as np


def round_to_fp16(x):
    """float32 array -> float32 array of fp16 values (round to nearest, ties to even)."""
    raise NotImplementedError
'''

HINTS = [
    "Normal range: b = x.view(np.uint32); lsb = (b >> 13) & 1; r = (b + 0x0FFF + lsb) & ~np.uint32(0x1FFF).",
    "0x0FFF is 'half minus one': adding it rounds up only what lies strictly above halfway; adding lsb "
    "too makes an exact tie round up only when that gives an even result.",
    "Subnormals (|x| < 2**-14): np.rint(x / 2.0**-24) * 2.0**-24 is exact in float32 and rounds ties to even.",
    "Overflow: after rounding, np.where(np.abs(y) > 65504, np.copysign(np.inf, x), y). Keep NaN: np.where(np.isnan(x), x, y).",
]

MAX = 65504.0
TINY = 2.0 ** -14


def reference():
    class Reference:
        @staticmethod
        def round_to_fp16(x):
            return quantize(np.asarray(x, dtype=np.float32), "fp16")
    return Reference


def _grid_neighbours(x: float) -> tuple[float, float]:
    """The fp16 values just below and just above |x| (for the explanation only)."""
    ax = abs(x)
    step = 2.0 ** (max(np.floor(np.log2(ax)), -14) - 10) if ax else 2.0 ** -24
    lo = float(np.floor(ax / step) * step)
    return lo, lo + step


def _why(x: float, want: float, got: float) -> str:
    if np.isnan(x):
        return "NaN must stay NaN"
    if np.isnan(got):
        return "you produced NaN from a number"
    if got != 0 and np.sign(got) != np.sign(x) and x != 0:
        return "the sign changed: keep the sign bit (b & 0x80000000) and round the magnitude"
    if np.isinf(want) and np.isfinite(got):
        return f"it rounds above 65504, fp16's largest value, so it overflows to {'-' if x < 0 else '+'}inf"
    if np.isinf(got) and np.isfinite(want):
        return f"it should not overflow: {abs(x)!r} rounds to {abs(want)!r} <= 65504"
    if np.isinf(x):
        return "inf must stay inf"
    if np.float32(got) != got or not np.isfinite(quantize(np.float32(got), "fp16")) or \
            quantize(np.float32(got), "fp16") != np.float32(got):
        return f"{got!r} is not an fp16 value: it keeps more mantissa bits than fp16's 10 (or than its subnormal grid)"
    lo, hi = _grid_neighbours(x)
    ax, ag = abs(x), abs(got)
    sub = " (a subnormal: below 2**-14 the grid step is 2**-24)" if ax < TINY else ""
    if ax - lo == hi - ax:
        how = "you round half up (or away from zero)" if ag > abs(want) else "you round ties down (truncate)"
        return (f"|x| is an exact tie, halfway between {lo!r} and {hi!r}{sub}; ties go to the one whose last "
                f"mantissa bit is even ({abs(want)!r}), but you returned {ag!r}: {how} instead of half to even")
    if ag == lo and hi - ax < ax - lo:
        return (f"|x| lies between {lo!r} and {hi!r}{sub}, nearer {hi!r}: you truncated (dropped the bits) "
                f"instead of rounding to nearest")
    if ag in (lo, hi):
        return f"|x| lies between {lo!r} and {hi!r}{sub}; the nearer one is {abs(want)!r}"
    return f"the nearest fp16 value is {want!r}{sub}"


def _compare(sol, xs, what):
    x = np.array(xs, dtype=np.float32)
    with on_case(sol, f"{what}: x of shape {x.shape}"):
        got = as_array(sol.round_to_fp16(x.copy()), what)
    want = np.asarray(quantize(x, "fp16"), dtype=np.float64)
    if got.shape != x.shape:
        raise Wrong(f"{what}: input of shape {x.shape}, you returned shape {got.shape}; keep the shape")
    same = (got == want) | (np.isnan(got) & np.isnan(want))
    same &= np.signbit(got) == np.signbit(want)
    if same.all():
        return
    i = int(np.flatnonzero(~same)[0])
    xi = float(x.reshape(-1)[i])
    bits = int(x.reshape(-1)[i:i + 1].view(np.uint32)[0])
    g, w = float(got.reshape(-1)[i]), float(want.reshape(-1)[i])
    why = "the sign of zero is kept (-0.0 stays -0.0)" if g == w else _why(xi, w, g)
    raise Wrong(f"{what}: x = {xi!r} (float32 bits 0x{bits:08x}): expected {w!r}, got {g!r} — {why}. "
                f"({int((~same).sum())} of {same.size} values wrong)")


def _values(xs, what):
    return lambda sol: _compare(sol, xs, what)


def check_random(sol):
    rng = np.random.default_rng(0)
    mags = 2.0 ** rng.uniform(-26, 16.5, size=4000)
    _compare(sol, mags * rng.choice([-1.0, 1.0], size=mags.size), "4000 random values, 2**-26 .. 2**16.5")


def held_out(sol, rng):
    """Shapes 1-D to 4-D of values the grader draws: fp16 values, exact ties between two of them
    (normal and subnormal), values a hair above and below a tie, values near 65504."""
    for shape in shapes(rng, 4, 1, 4, size=(1, 6)):
        n = int(np.prod(shape))
        exponent = rng.integers(-18, 16, size=n)                  # below -14: subnormal, grid step 2**-24
        sub = exponent < -14
        step = np.where(sub, 2.0 ** -24, 2.0 ** (exponent - 10))
        grid = np.where(sub, rng.integers(0, 1 << 10, size=n), rng.integers(1 << 10, 1 << 11, size=n)) * step
        kind = rng.integers(0, 5, size=n)
        x = np.where(kind == 0, grid, grid + step / 2)                 # an fp16 value, or an exact tie
        x = np.where(kind == 2, grid + step / 2 * (1 + 2.0 ** -8), x)  # just above a tie
        x = np.where(kind == 3, grid + step / 2 * (1 - 2.0 ** -8), x)  # just below a tie
        x = np.where(kind == 4, rng.uniform(65000, 65600, size=n), x)  # near the largest fp16 value
        x = x * rng.choice([-1.0, 1.0], size=n)
        _compare(sol, x.astype(np.float32).reshape(shape), f"held-out values, shape {shape}")


U = 2.0 ** -10          # fp16's last mantissa bit at 1.0
CHECKS = [
    ("fp16 values stay exactly as they are", _values([1.0, 0.5, -3.25, 65504.0, 2.0 ** -14, 0.0, 1 + U], "exact values")),
    ("round to nearest, not truncate", _values([1 + 0.7 * U, 1 + 0.3 * U, 3.14159265, 1000.7, -2.71828], "rounding")),
    ("exact ties go to the even mantissa", _values([1 + U / 2, 1 + 3 * U / 2, 2 + U, 1024.5, 1025.5], "ties")),
    ("negative numbers round like positive ones", _values([-(1 + U / 2), -(1 + 0.7 * U), -1025.5, -0.0], "signs")),
    ("carry out of the mantissa bumps the exponent", _values([2 - 2.0 ** -12, 1 - 2.0 ** -13, 65519.0, 4095.9], "carry")),
    ("overflow to inf; inf and NaN kept", _values([65520.0, 1e6, -7e4, np.inf, -np.inf, np.nan], "overflow")),
    # NaNs whose mantissa is all low, all set or negative: adding the rounding bias carries them
    # into inf or ±0 unless NaN is kept aside (np.nan alone, 0x7fc00000, rounds to NaN anyway)
    ("every NaN stays NaN, whatever its payload", _values(
        np.array([0x7F800001, 0x7FFFFFFF, 0xFFFFFFFF, 0xFFC00001], dtype=np.uint32).view(np.float32), "NaN payloads")),
    ("subnormals: grid step 2**-24 below 2**-14", _values(
        [2.0 ** -24, 2.0 ** -25, 3 * 2.0 ** -25, 1e-8, 2.0 ** -15 + 2.0 ** -24, 5e-6, -1.5 * 2.0 ** -24],
        "subnormals")),
    ("4000 random values against minidist.numerics.quantize", check_random),
    ("held out: shapes 1-D to 4-D of ties, near-ties, subnormals and values near 65504", held_out),
]
