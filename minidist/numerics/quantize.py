"""Rounding float32/float64 values to fp32, fp16, bf16 and FP8, bit by bit.

:func:`quantize` is what a cast like ``x.half()`` does on a GPU, written out with integer
operations on the float's bit pattern so that every step is visible:

1. View the input as unsigned integers (``float32 -> uint32``, ``float64 -> uint64``) and
   split off the sign; the rest is the magnitude's exponent field and mantissa field.
2. Form the significand ``sig`` (the mantissa with its implicit leading 1 put back) and the
   unbiased exponent ``E``.
3. Decide how many low bits of ``sig`` the target format cannot keep at this exponent:
   ``M_src - m`` for a target normal number, one more per power of two below the
   target's smallest normal (the subnormal range keeps fewer and fewer bits).
4. Drop those bits with **round to nearest, ties to even** (IEEE 754 §4.3.1), the integer
   trick ``(v + half - 1 + lsb) >> n``: adding ``half - 1`` rounds up anything strictly
   above the halfway point; adding the kept least-significant bit as well turns an exact
   tie into "round up only if that makes the result even".
5. Put the rounded significand back at the same exponent. A carry out of the significand
   (1.111…1 rounding up to 10.000…0) simply increments the exponent field — the layout
   of IEEE floats makes that the same as adding to the whole bit pattern.
6. Anything above the target's largest finite value overflows: to ±inf for formats with
   infinities (fp16, bf16, fp8_e5m2), to NaN for fp8_e4m3 (OCP E4M3 has no infinity; this
   is what ``ml_dtypes.float8_e4m3fn`` does), or to ±max when ``saturate=True``.

The result stays in the input's own float type (float32 in -> float32 out, float64 in ->
float64 out) but every value is exactly representable in the target format. Rounding
float64 input goes straight from the float64 bits (uint64): going through float32 first
would round twice and can be wrong — e.g. ``1 + 2^-8 + 2^-30`` is just above a bf16 tie,
but float32 rounds it *onto* the tie, and ties-to-even then rounds it down to 1.

:func:`to_bits` gives the encoded target bit pattern (uint8/uint16/uint32) and
:func:`from_bits` decodes one.
"""
from __future__ import annotations

import dataclasses

import numpy as np

from .formats import Format, get_format


@dataclasses.dataclass(frozen=True)
class _Source:
    """The binary layout of the NumPy float the values arrive in."""

    float_type: type
    uint_type: type
    exponent_bits: int
    mantissa_bits: int

    @property
    def bias(self) -> int:
        return 2 ** (self.exponent_bits - 1) - 1

    @property
    def sign_bit(self) -> int:
        return 1 << (self.exponent_bits + self.mantissa_bits)

    @property
    def inf_bits(self) -> int:
        return ((1 << self.exponent_bits) - 1) << self.mantissa_bits

    def bits_of(self, value: float) -> int:
        return int(np.array(value, self.float_type).view(self.uint_type))


_FLOAT32 = _Source(np.float32, np.uint32, 8, 23)
_FLOAT64 = _Source(np.float64, np.uint64, 11, 52)


def _source_for(x: np.ndarray) -> tuple[np.ndarray, _Source]:
    """float32 (and float16) stay float32; float64 and everything else go to float64."""
    if x.dtype in (np.float32, np.float16):
        return x.astype(np.float32, copy=False), _FLOAT32       # read only: no copy needed
    return x.astype(np.float64, copy=False), _FLOAT64


def _shift_right_rne(v: np.ndarray, n: np.ndarray, one) -> np.ndarray:
    """``v / 2^n`` rounded to the nearest integer, ties to even (``n >= 1``)."""
    half_minus_one = (one << (n - one)) - one
    lsb = (v >> n) & one                       # the bit that will become the last kept bit
    return (v + half_minus_one + lsb) >> n


def _split(magnitude: np.ndarray, src: _Source):
    """Significand (with the implicit 1) and unbiased exponent of each magnitude."""
    U = src.uint_type
    exp_field = magnitude >> U(src.mantissa_bits)
    mantissa = magnitude & U((1 << src.mantissa_bits) - 1)
    is_normal = exp_field != 0
    sig = np.where(is_normal, mantissa | U(1 << src.mantissa_bits), mantissa)
    # subnormals share the smallest normal's exponent, 1 - bias (they just lack the leading 1)
    E = np.maximum(exp_field.astype(np.int64), 1) - src.bias
    return exp_field, sig, E


def _round_magnitude(magnitude: np.ndarray, src: _Source, fmt: Format) -> np.ndarray:
    """Round magnitudes (sign bit clear) to ``fmt``'s grid; result in source bits.

    Where the value is a *normal* number of ``fmt`` the grid step is the same power of two
    for the whole binade, so rounding is one add and one mask on the bit pattern: add
    ``half − 1`` plus the last kept bit (ties go to even), clear the ``d`` dropped bits. A
    carry out of the mantissa bumps the exponent field by itself, and a value past the
    source's largest finite becomes the source's inf (the caller's overflow check sees it).
    Only magnitudes below ``fmt``'s smallest normal (where the step depends on how far
    below they are) take the general, per-element path of :func:`_round_small`.
    """
    U = src.uint_type
    shape = np.shape(magnitude)
    magnitude = np.atleast_1d(magnitude)                            # a 0-d input, too, can be indexed
    d = src.mantissa_bits - fmt.mantissa_bits                       # bits the target drops
    lsb = (magnitude >> U(d)) & U(1)
    out = magnitude + U((1 << (d - 1)) - 1)
    out += lsb
    out &= U(~((1 << d) - 1) & (src.sign_bit - 1))
    small = magnitude < U(src.bits_of(2.0 ** fmt.min_exponent))     # fmt's subnormals (and zero)
    if small.any():
        out[small] = _round_small(magnitude[small], src, fmt)
    return out.reshape(shape)


def _round_small(magnitude: np.ndarray, src: _Source, fmt: Format) -> np.ndarray:
    """Round finite magnitudes (sign bit clear) to ``fmt``'s grid, any binade (per-element
    shift); result in source bits."""
    U = src.uint_type
    one = U(1)
    exp_field, sig, E = _split(magnitude, src)
    # Bits of the significand the target cannot keep: (M_src - m) in the normal range,
    # plus one per binade below the target's smallest normal (fmt's subnormal range).
    # Past M_src + 2 everything rounds to zero, so clip there to keep shifts in range.
    below_normal = np.clip(fmt.min_exponent - E, 0, None)
    drop = np.minimum(src.mantissa_bits - fmt.mantissa_bits + below_normal, src.mantissa_bits + 2).astype(U)
    kept = _shift_right_rne(sig, drop, one)
    # Re-assemble at the same exponent: bits = (exp_field - 1) << M + rounded significand.
    # A rounded significand of 2^(M+1) carries into the exponent field by itself.
    base = (np.maximum(exp_field, one) - one) << U(src.mantissa_bits)     # 0 for subnormals
    # Rounded all the way to zero: the result is 0, not 2^E (base would keep the exponent).
    return np.where(kept == 0, U(0), base + (kept << drop))


def quantize(x, dtype: str | Format, saturate: bool = False) -> np.ndarray:
    """Round ``x`` to the nearest value representable in ``dtype`` (ties to even).

    ``x``: array-like of float32 or float64 (float16 is treated as float32, anything else as
    float64). Returns an array of the same shape and float type whose values all lie on
    ``dtype``'s grid. Subnormals are produced where the format has them; NaN stays NaN
    (its sign kept, its payload not); ±0 keep their sign.

    Overflow (``|x|`` rounds above ``max_finite``, or ``x`` is ±inf):

    * ``saturate=False`` (default, like ``ml_dtypes`` / NumPy casts): ±inf for fp32, fp16,
      bf16 and fp8_e5m2; NaN for fp8_e4m3, which has no infinity (OCP E4M3FN). Note that
      the rounding happens first: 464 is the tie between 448 and 480 and rounds to even
      448, so only values above 464 become NaN.
    * ``saturate=True``: clamp to ±max_finite (448 for fp8_e4m3), as NVIDIA Transformer
      Engine's FP8 casts do (CUDA's ``__NV_SATFINITE``); infinities also clamp; NaN stays NaN.
    """
    fmt = get_format(dtype)
    x, src = _source_for(np.asarray(x))
    U = src.uint_type
    if fmt.exponent_bits == src.exponent_bits and fmt.mantissa_bits == src.mantissa_bits:
        return x.copy()                                  # fp32 of float32: nothing to round
    bits = x.view(U)
    sign = bits & U(src.sign_bit)
    magnitude = bits & U(src.sign_bit - 1)
    is_nan = magnitude > U(src.inf_bits)

    rounded = _round_magnitude(magnitude, src, fmt)
    # ±inf in the input lands here too: its rounded pattern is the source's inf, > max.
    overflow = rounded > U(src.bits_of(fmt.max_finite))
    if saturate:
        overflow_to = src.bits_of(fmt.max_finite)
    elif fmt.has_inf:
        overflow_to = src.inf_bits
    else:                                                # OCP E4M3: no inf, overflow is NaN
        overflow_to = src.bits_of(np.nan)
    if overflow.any():
        rounded[overflow] = U(overflow_to)
    if is_nan.any():
        rounded[is_nan] = U(src.bits_of(np.nan))
    rounded |= sign
    return rounded.view(src.float_type)


def to_bits(x, dtype: str | Format, saturate: bool = False) -> np.ndarray:
    """Encode ``x`` in ``dtype``: the sign/exponent/mantissa bit pattern as unsigned ints.

    Returns ``uint8`` (FP8), ``uint16`` (fp16, bf16) or ``uint32`` (fp32), same shape as
    ``x``. Rounding is :func:`quantize`'s; NaN encodes as the format's canonical NaN.
    """
    fmt = get_format(dtype)
    q, src = _source_for(quantize(x, fmt, saturate))
    U, m = src.uint_type, fmt.mantissa_bits
    bits = q.view(U)
    sign = (bits >> U(src.exponent_bits + src.mantissa_bits)).astype(np.int64)
    magnitude = bits & U(src.sign_bit - 1)
    exp_field, sig, E = _split(magnitude, src)
    sig = sig.astype(np.int64)
    mantissa = sig & ((1 << src.mantissa_bits) - 1)

    # target normal: re-bias the exponent, keep the top m mantissa bits (the rest are 0)
    normal = (exp_field != 0) & (E >= fmt.min_exponent)
    field_e = np.where(normal, E + fmt.bias, 0)
    as_normal = (field_e << m) | (mantissa >> (src.mantissa_bits - m))
    # target subnormal: the value counted in steps of the smallest subnormal, 2^(emin - m)
    shift = np.clip(src.mantissa_bits - m + fmt.min_exponent - E, 0, 63)
    as_subnormal = sig >> shift
    out = np.where(normal, as_normal, as_subnormal)

    if fmt.has_inf:
        out = np.where(magnitude == U(src.inf_bits), fmt.inf_bits, out)
    out = np.where(magnitude > U(src.inf_bits), fmt.nan_bits, out)
    out = out | (sign << (fmt.total_bits - 1))
    return out.astype(fmt.storage_dtype)


def from_bits(bits, dtype: str | Format, out_dtype=np.float32) -> np.ndarray:
    """Decode ``dtype`` bit patterns to floats: ``(-1)^s × 2^(e - bias) × 1.f`` and friends."""
    fmt = get_format(dtype)
    b = np.asarray(bits).astype(np.int64)
    m = fmt.mantissa_bits
    s = (b >> (fmt.total_bits - 1)) & 1
    e = (b >> m) & fmt.exponent_all_ones
    f = b & ((1 << m) - 1)
    # normal: 1.f × 2^(e-bias) = (2^m + f) × 2^(e-bias-m); subnormal: 0.f × 2^emin
    value = np.where(e == 0,
                     np.ldexp(f.astype(np.float64), fmt.min_exponent - m),
                     np.ldexp((f + (1 << m)).astype(np.float64), (e - fmt.bias - m).astype(np.int32)))
    if fmt.nan_rule == "ieee":
        value = np.where((e == fmt.exponent_all_ones) & (f == 0), np.inf, value)
        value = np.where((e == fmt.exponent_all_ones) & (f != 0), np.nan, value)
    else:
        value = np.where((b & ((1 << (fmt.total_bits - 1)) - 1)) == fmt.nan_bits, np.nan, value)
    value = np.where(s == 1, -value, value)
    return value.astype(out_dtype)
