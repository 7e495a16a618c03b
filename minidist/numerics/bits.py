"""Teaching views of number formats: a value's fields, a table of ranges, lost precision.

* :func:`decompose` shows how one value is stored: sign, exponent field, mantissa field,
  and the arithmetic that turns them back into the value. The classic worked example::

      25.125 = 11001.001b = 1.1001001b × 2^4
      fp32:  0 10000011 10010010000000000000000    (exponent 4 + bias 127 = 131)
      fp16:  0 10011 1001001000                     (exponent 4 + bias 15 = 19)
      bf16:  0 10000011 1001001                     (fp32's exponent, 7 mantissa bits)

* :func:`format_table` lists each format's range and precision side by side.
* :func:`precision_loss_example` answers "when does 1 + x == 1?" in each format by trying
  it, not by quoting a constant.
"""
from __future__ import annotations

import dataclasses
from fractions import Fraction

import numpy as np

from .formats import FORMATS, Format, get_format
from .quantize import from_bits, quantize, to_bits


@dataclasses.dataclass(frozen=True)
class BitView:
    """How one value is stored in one format (after rounding it to that format)."""

    value: float             # what was asked for
    stored: float            # what the format actually holds (value rounded, ties to even)
    format: str
    sign: int                # 0 = +, 1 = -
    exponent_field: int      # the raw biased exponent bits, as an integer
    exponent: int            # unbiased exponent: field - bias (emin for subnormals)
    mantissa_field: int      # the raw fraction bits, as an integer
    bits: str                # "s eeeee mmmmmmmmmm"
    kind: str                # "normal" | "subnormal" | "zero" | "inf" | "nan"
    explanation: str

    def __str__(self) -> str:
        return f"{self.bits}  ({self.kind})\n{self.explanation}"


def _binary_fixed_point(x: float, max_chars: int = 48) -> str | None:
    """``25.125 -> '11001.001'``; ``None`` when the expansion is too long to be helpful."""
    frac = Fraction(abs(x))                          # exact: every float is a dyadic rational
    whole, rest = divmod(frac.numerator, frac.denominator)
    digits = ""
    while rest and len(digits) < max_chars:
        rest *= 2
        digits += str(rest // frac.denominator)
        rest %= frac.denominator
    text = bin(whole)[2:] + ("." + digits if digits else "")
    return None if rest or len(text) > max_chars else text


def decompose(value: float, dtype: str | Format) -> BitView:
    """Round ``value`` to ``dtype`` and show the sign / exponent / mantissa fields."""
    fmt = get_format(dtype)
    code = int(to_bits(np.float64(value), fmt))
    m, E = fmt.mantissa_bits, fmt.exponent_bits
    sign = code >> (E + m)
    e_field = (code >> m) & fmt.exponent_all_ones
    f_field = code & ((1 << m) - 1)
    stored = float(from_bits(np.array(code), fmt, out_dtype=np.float64))
    bits = f"{sign} {e_field:0{E}b} {f_field:0{m}b}"

    if np.isnan(stored):
        kind = "nan"
    elif np.isinf(stored):
        kind = "inf"
    elif e_field == 0:
        kind = "zero" if f_field == 0 else "subnormal"
    else:
        kind = "normal"
    exponent = (e_field - fmt.bias) if kind == "normal" else fmt.min_exponent

    sign_text = f"sign {sign} ({'-' if sign else '+'})"
    if kind in ("nan", "inf"):
        rule = ("exponent all ones" + (", mantissa 0" if kind == "inf" else ", mantissa != 0")
                if fmt.nan_rule == "ieee" else "every exponent and mantissa bit set")
        explanation = f"{value!r} in {fmt.name}: {sign_text}, {rule} -> {stored}"
        return BitView(value, stored, fmt.name, sign, e_field, exponent, f_field, bits, kind, explanation)

    lead = "1" if kind == "normal" else "0"
    significand = (int(lead) + f_field / 2 ** m)
    exp_text = (f"exponent field {e_field:0{E}b}b = {e_field}, unbiased {e_field} - {fmt.bias} = {exponent}"
                if kind == "normal" else
                f"exponent field all zeros: {kind}, exponent fixed at emin = 1 - {fmt.bias} = {exponent}")
    lines = [
        f"{value!r} in {fmt.name}: {sign_text}; {exp_text}",
        (f"mantissa field {f_field:0{m}b}b -> significand {lead}.{f_field:0{m}b}b = {significand!r} "
         f"({'implicit leading 1' if kind == 'normal' else 'no implicit 1'})"),
        f"value = {'-' if sign else '+'}{significand!r} × 2^{exponent} = {stored!r}",
    ]
    fixed = _binary_fixed_point(stored)
    if fixed is not None and kind == "normal":
        lines.append(f"in binary: {fixed}b = {lead}.{f_field:0{m}b}b × 2^{exponent}")
    if stored == value:
        lines.append("exact: no rounding needed")
    else:
        lines.append(f"rounded: {value!r} is not representable; nearest (ties to even) is {stored!r}, "
                     f"relative error {abs(stored - value) / abs(value):.3g}")
    return BitView(value, stored, fmt.name, sign, e_field, exponent, f_field, bits, kind, "\n".join(lines))


def format_table(names=tuple(FORMATS)) -> list[dict]:
    """One row per format: field widths, bias, range and precision (all derived)."""
    rows = []
    for name in names:
        f = get_format(name)
        rows.append({
            "format": f.name, "bits": f.total_bits, "exponent_bits": f.exponent_bits,
            "mantissa_bits": f.mantissa_bits, "bias": f.bias, "has_inf": f.has_inf,
            "max_finite": f.max_finite, "smallest_normal": f.smallest_normal,
            "smallest_subnormal": f.smallest_subnormal, "epsilon": f.epsilon,
            "decimal_digits": round(f.decimal_digits, 2),
            "log2_range": (f.min_exponent - f.mantissa_bits, float(np.log2(f.max_finite))),
        })
    return rows


def format_table_text(names=tuple(FORMATS)) -> str:
    """:func:`format_table` as aligned text for printing."""
    header = ("format", "bits", "e", "m", "bias", "max finite", "min normal", "min subnormal", "epsilon", "digits")
    lines = ["  ".join(f"{h:>13}" for h in header)]
    for r in format_table(names):
        cells = (r["format"], r["bits"], r["exponent_bits"], r["mantissa_bits"], r["bias"],
                 f"{r['max_finite']:.6g}", f"{r['smallest_normal']:.3e}", f"{r['smallest_subnormal']:.3e}",
                 f"{r['epsilon']:.3e}", f"{r['decimal_digits']:.1f}")
        lines.append("  ".join(f"{c:>13}" for c in cells))
    return "\n".join(lines)


@dataclasses.dataclass(frozen=True)
class PrecisionLoss:
    """What happens to ``1 + small`` in one format."""

    format: str
    epsilon: float           # smallest power of two eps with 1 + eps != 1, found by trying
    one_plus_half_eps: float  # 1 + eps/2: an exact tie, rounds to even = 1
    delta: float
    one_plus_delta: float    # 1 + delta after rounding to the format
    explanation: str


def precision_loss_example(dtype: str | Format, delta: float = 1e-4) -> PrecisionLoss:
    """Find the smallest ``eps = 2^-k`` with ``1 + eps != 1`` in ``dtype``, and round ``1 + delta``.

    With round-to-nearest-even, ``1 + 2^-(m+1)`` is exactly halfway between 1 and the next
    number ``1 + 2^-m`` and rounds to the even one, 1; so the answer is ``2^-m``, the
    machine epsilon. ``1 + 1e-4`` survives in fp32 (eps ≈ 1.2e-7) but is 1 in fp16
    (eps ≈ 9.8e-4) and bf16 (eps = 2^-7 ≈ 7.8e-3): small updates added to large weights
    vanish — one reason optimizers keep fp32 master weights.
    """
    fmt = get_format(dtype)
    k = 0
    while float(quantize(np.float64(1.0 + 2.0 ** -(k + 1)), fmt)) != 1.0:
        k += 1
    eps = 2.0 ** -k
    half = float(quantize(np.float64(1.0 + eps / 2), fmt))
    rounded = float(quantize(np.float64(1.0 + delta), fmt))
    verdict = "== 1: the increment is lost" if rounded == 1.0 else f"!= 1 (stored as {rounded!r})"
    explanation = (f"{fmt.name}: smallest power of two with 1 + eps != 1 is 2^-{k} = {eps:.3g}; "
                   f"1 + 2^-{k + 1} is a tie and rounds to even, 1. "
                   f"1 + {delta:g} {verdict}")
    return PrecisionLoss(fmt.name, eps, half, delta, rounded, explanation)
