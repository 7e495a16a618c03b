"""Binary floating-point formats: what the bits of fp32, fp16, bf16 and FP8 mean.

A binary floating-point number is three fields, sign ``s``, exponent ``e`` and mantissa
(fraction) ``f``, read as::

    normal     (e != 0):  (-1)^s × 2^(e - bias) × 1.f        (an implicit leading 1)
    subnormal  (e == 0):  (-1)^s × 2^(1 - bias) × 0.f        (no implicit 1: gradual underflow)

Every format here has ``bias = 2^(exponent_bits - 1) - 1`` (IEEE 754-2019 §3.4). They differ
in how the field widths split the bits — more exponent bits buy *range*, more mantissa
bits buy *precision* — and in what the all-ones exponent means:

==========  ====  ===  ====  =====================================================
format      bits  exp  mant  special values
==========  ====  ===  ====  =====================================================
fp32          32    8    23  IEEE binary32: exponent all ones = ±inf (f == 0) or NaN
fp16          16    5    10  IEEE binary16: same rule
bf16          16    8     7  fp32's exponent with a 7-bit mantissa (Google Brain's
                             "brain float"): fp32's range, ~3 significant digits
fp8_e4m3       8    4     3  OCP FP8 "E4M3FN": no infinities; the all-ones exponent
                             holds normal numbers, only S.1111.111 is NaN, so the
                             largest finite value is 1.110b × 2^8 = 448
fp8_e5m2       8    5     2  OCP FP8 "E5M2": IEEE-like, has ±inf, max 57344
==========  ====  ===  ====  =====================================================

FP8 follows the OCP 8-bit Floating Point Specification (OFP8) rev. 1.0, 2023, and
Micikevicius et al., "FP8 Formats for Deep Learning", 2022. The derived quantities
(largest finite value, smallest normal and subnormal, machine epsilon) are computed from
the field widths below rather than typed in, so a student can follow where 65504 or 448
come from.
"""
from __future__ import annotations

import dataclasses

import numpy as np

# How the all-ones exponent is used.
#   "ieee":     exponent all ones is special: mantissa 0 -> ±inf, mantissa != 0 -> NaN.
#   "all_ones": only sign.1111.111 (every exponent and mantissa bit set) is NaN; there is
#               no infinity and the rest of the all-ones exponent holds normal numbers (OCP E4M3).
NAN_RULES = ("ieee", "all_ones")


@dataclasses.dataclass(frozen=True)
class Format:
    """One binary floating-point format, described by its bit fields.

    ``name``, ``exponent_bits``, ``mantissa_bits``, ``bias``, ``has_inf`` and ``nan_rule``
    define the format; everything else (``max_finite``, ``smallest_normal``,
    ``smallest_subnormal``, ``epsilon`` …) is derived from them.
    """

    name: str
    exponent_bits: int
    mantissa_bits: int
    bias: int
    has_inf: bool
    nan_rule: str            # one of NAN_RULES
    description: str = ""

    def __post_init__(self):
        if self.nan_rule not in NAN_RULES:
            raise ValueError(f"nan_rule must be one of {NAN_RULES}, got {self.nan_rule!r}")
        if self.has_inf and self.nan_rule != "ieee":
            raise ValueError("a format with infinities reserves the whole all-ones exponent (nan_rule='ieee')")

    # ---- sizes -------------------------------------------------------------------
    @property
    def total_bits(self) -> int:
        return 1 + self.exponent_bits + self.mantissa_bits

    @property
    def storage_dtype(self):
        """The unsigned integer type that holds one encoded value."""
        return {8: np.uint8, 16: np.uint16, 32: np.uint32}[self.total_bits]

    @property
    def exponent_all_ones(self) -> int:
        return (1 << self.exponent_bits) - 1

    # ---- exponent range ----------------------------------------------------------
    @property
    def min_exponent(self) -> int:
        """Unbiased exponent of the smallest normal number: ``emin = 1 - bias``."""
        return 1 - self.bias

    @property
    def max_exponent(self) -> int:
        """Unbiased exponent of the largest finite number.

        IEEE formats reserve the all-ones exponent for inf/NaN, so their top usable field
        is ``2^E - 2``; E4M3 uses the all-ones exponent for numbers too.
        """
        top_field = self.exponent_all_ones - (1 if self.nan_rule == "ieee" else 0)
        return top_field - self.bias

    # ---- derived values ----------------------------------------------------------
    @property
    def max_mantissa_field(self) -> int:
        """Largest mantissa field at the top exponent (E4M3: all ones is NaN, so one less)."""
        all_ones = (1 << self.mantissa_bits) - 1
        return all_ones if self.nan_rule == "ieee" else all_ones - 1

    @property
    def max_finite(self) -> float:
        """Largest finite value: ``(1 + max_mantissa / 2^m) × 2^emax``."""
        significand = 1.0 + self.max_mantissa_field / 2.0 ** self.mantissa_bits
        return significand * 2.0 ** self.max_exponent

    @property
    def smallest_normal(self) -> float:
        """``2^emin``: below it the implicit leading 1 is gone and precision drops."""
        return 2.0 ** self.min_exponent

    @property
    def smallest_subnormal(self) -> float:
        """``2^(emin - m)``: the last representable step before zero."""
        return 2.0 ** (self.min_exponent - self.mantissa_bits)

    @property
    def epsilon(self) -> float:
        """Machine epsilon ``2^-m``: the gap between 1 and the next representable number."""
        return 2.0 ** -self.mantissa_bits

    @property
    def decimal_digits(self) -> float:
        """Roughly how many significant decimal digits the mantissa carries: ``(m+1)·log10 2``."""
        return (self.mantissa_bits + 1) * float(np.log10(2.0))

    # ---- special bit patterns (sign bit clear) ------------------------------------
    @property
    def inf_bits(self) -> int | None:
        return (self.exponent_all_ones << self.mantissa_bits) if self.has_inf else None

    @property
    def nan_bits(self) -> int:
        """The canonical (quiet) NaN: IEEE sets the top mantissa bit, E4M3 sets all bits."""
        if self.nan_rule == "ieee":
            return (self.exponent_all_ones << self.mantissa_bits) | (1 << (self.mantissa_bits - 1))
        return (1 << (self.exponent_bits + self.mantissa_bits)) - 1

    def __str__(self) -> str:
        return f"{self.name} (1 sign, {self.exponent_bits} exponent, {self.mantissa_bits} mantissa bits)"


def _ieee_like(name: str, exponent_bits: int, mantissa_bits: int, description: str) -> Format:
    return Format(name, exponent_bits, mantissa_bits, bias=2 ** (exponent_bits - 1) - 1,
                  has_inf=True, nan_rule="ieee", description=description)


FORMATS = {
    "fp32": _ieee_like("fp32", 8, 23, "IEEE 754 binary32, NumPy float32"),
    "fp16": _ieee_like("fp16", 5, 10, "IEEE 754 binary16, NumPy float16"),
    "bf16": _ieee_like("bf16", 8, 7, "bfloat16: fp32's 8-bit exponent, 7-bit mantissa"),
    "fp8_e4m3": Format("fp8_e4m3", 4, 3, bias=7, has_inf=False, nan_rule="all_ones",
                       description="OCP FP8 E4M3 (E4M3FN): no inf, NaN = S.1111.111, max 448"),
    "fp8_e5m2": _ieee_like("fp8_e5m2", 5, 2, "OCP FP8 E5M2: IEEE-like with inf, max 57344"),
}

# Other spellings students meet (torch / ml_dtypes names).
ALIASES = {
    "float32": "fp32", "float16": "fp16", "half": "fp16", "bfloat16": "bf16",
    "float8_e4m3fn": "fp8_e4m3", "e4m3": "fp8_e4m3", "float8_e5m2": "fp8_e5m2", "e5m2": "fp8_e5m2",
}


def get_format(name: str | Format) -> Format:
    """The :class:`Format` called ``name`` (or ``name`` itself if it already is one)."""
    if isinstance(name, Format):
        return name
    key = ALIASES.get(name, name) if isinstance(name, str) else name
    if key not in FORMATS:
        raise ValueError(f"unknown number format {name!r}; known formats: {', '.join(FORMATS)} "
                         f"(aliases: {', '.join(ALIASES)})")
    return FORMATS[key]
