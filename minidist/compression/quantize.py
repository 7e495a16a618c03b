"""Linear and logarithmic quantization of a tensor: the conventions, written out.

Quantization stores a float tensor as small integers ``q`` plus a few floats that map them
back (Jacob et al. 2018, §2; the source notes' 线性量化 / 非线性量化 / 对称 / 非对称):
``x ≈ scale · (q − zero_point)``. Everything below is exact, so that an independent
implementation of the same conventions reproduces ``q``, ``scale`` and ``zero_point`` bit
for bit:

* **rounding** is round half to even (``np.rint``; Python's ``round``), and values are
  clamped to the integer range *after* rounding;
* the **scale is a float32 number** (it is what is stored): it is computed in float64 from
  the float64 values of ``x``, then rounded to float32; ``x / scale`` is computed in float64
  with that float32 scale; an all-zero group gets scale 1;
* **symmetric** (``zero_point = 0``): ``q ∈ [−(2^(b−1)−1), 2^(b−1)−1]`` (−2^(b−1) is left
  out so that the range is symmetric), ``scale = max|x| / (2^(b−1)−1)``,
  ``q = clamp(round(x / scale))``;
* **asymmetric**: ``q ∈ [−2^(b−1), 2^(b−1)−1]``; the range ``[min, max]`` is first widened
  to include 0 (so that 0 is exactly representable: zero padding, ReLU/GELU zeros), then
  ``scale = (max − min) / (2^b − 1)``, ``zero_point = clamp(−2^(b−1) − round(min / scale))``,
  ``q = clamp(round(x / scale) + zero_point)``;
* **logarithmic** (power-of-two levels, Miyashita et al. 2016; the notes' 非线性量化 with
  对数分布): ``scale = max|x|`` (float32); the levels are ``0`` and
  ``±scale · 2^(−j)`` for ``j = 0 … 2^(b−1)−2``, stored as the signed code ``±(j+1)`` (0 for
  zero), so the codes fill the symmetric range. ``j = round(−log2(|x| / scale))`` (rounding
  in the log domain); a ``j`` beyond the last level clamps to it, except that
  ``|x| < scale · 2^(−jmax) / 2`` (below half the smallest level) becomes 0.

**Granularity**, for a weight stored minidist's way, ``(in_features, out_features)``:

==========  ======================================================  ========================
``tensor``  one scale (and zero point) for the whole tensor          scale shape ``()``
``channel`` one per output channel (column), over its ``in`` values  ``(out,)``
``group``   one per ``group_size`` consecutive inputs of a column   ``(in // group_size, out)``
==========  ======================================================  ========================

``scale[j, c]`` of ``group`` covers ``W[j·g:(j+1)·g, c]`` (GPTQ's and AWQ's groups along the
input dimension). ``tensor`` works on any shape; ``channel`` and ``group`` need 2-D ``x``.

Bytes: :meth:`QuantizedTensor.storage` returns the arrays that would be stored — the codes
bit-packed (:func:`pack_codes`: ``ceil(n·b/8)`` bytes, so 4-bit codes are half a byte
each), the float32 scales, the zero points packed at the same width — and
:meth:`QuantizedTensor.nbytes` is their measured size.
"""
from __future__ import annotations

import dataclasses

import numpy as np

SCHEMES = ("symmetric", "asymmetric", "log")
GRANULARITIES = ("tensor", "channel", "group")


def int_range(bits: int, scheme: str) -> tuple[int, int]:
    """``(qmin, qmax)`` of the codes: symmetric and log leave out −2^(b−1)."""
    if not isinstance(bits, (int, np.integer)) or isinstance(bits, bool) or not 2 <= bits <= 8:
        raise ValueError(f"bits must be 2…8 (an integer), got {bits!r}")
    qmax = 2 ** (bits - 1) - 1
    return (-qmax if scheme in ("symmetric", "log") else -qmax - 1), qmax


# -- groups: every scheme quantizes the rows of a 2-D view -----------------------------------------
def _rows(x: np.ndarray, granularity: str, group_size: int | None) -> np.ndarray:
    """A (groups, members) float64 view: one row per scale."""
    x = np.asarray(x, dtype=np.float64)
    if granularity == "tensor":
        return x.reshape(1, -1)
    if x.ndim != 2:
        raise ValueError(f"{granularity}-wise quantization needs a 2-D weight (in_features, out_features), "
                         f"got shape {x.shape}")
    if granularity == "channel":
        return x.T                                                  # (out, in): a row per output column
    n_in, n_out = x.shape
    if not isinstance(group_size, (int, np.integer)) or isinstance(group_size, bool) or group_size < 1 \
            or n_in % group_size:
        raise ValueError(f"group_size {group_size!r} must divide in_features {n_in} (a positive integer)")
    return x.T.reshape(n_out * (n_in // group_size), group_size)   # (out·in/g, g), column-major groups


def _unrows(rows: np.ndarray, shape: tuple, granularity: str, group_size: int | None) -> np.ndarray:
    if granularity == "tensor":
        return rows.reshape(shape)
    return rows.reshape(shape[1], shape[0]).T                       # back to (in, out)


def _scale_shape(shape: tuple, granularity: str, group_size: int | None) -> tuple:
    if granularity == "tensor":
        return ()
    return (shape[1],) if granularity == "channel" else (shape[0] // group_size, shape[1])


def _per_row(values: np.ndarray, shape: tuple, granularity: str, group_size) -> np.ndarray:
    """Scales/zero points of the rows, shaped as documented (group: (in/g, out))."""
    if granularity == "group":
        return values.reshape(shape[1], shape[0] // group_size).T
    return values.reshape(_scale_shape(shape, granularity, group_size))


def _row_values(values: np.ndarray, granularity: str) -> np.ndarray:
    """Inverse of :func:`_per_row`: one value per row, as a (groups, 1) column."""
    v = np.asarray(values)
    return (v.T if granularity == "group" else v).reshape(-1, 1)


# -- the schemes, on rows ------------------------------------------------------------------------
def _as_scale(s: np.ndarray) -> np.ndarray:
    """float32 scales (what is stored), all-zero groups → 1, read back as float64."""
    s = s.astype(np.float32)
    return np.where(s == 0, np.float32(1), s).astype(np.float64)


def range_params(lo, hi, bits: int, scheme: str = "symmetric"):
    """``(scale, zero_point)`` for values in ``[lo, hi]`` (arrays or numbers), by the
    conventions above: symmetric uses ``max(|lo|, |hi|)`` and zero point None; asymmetric
    widens the range to include 0. The scale is float32-valued (returned as float64)."""
    lo, hi = np.asarray(lo, np.float64), np.asarray(hi, np.float64)
    qmin, qmax = int_range(bits, scheme)
    if scheme == "symmetric":
        return _as_scale(np.maximum(np.abs(lo), np.abs(hi)) / qmax), None
    lo, hi = np.minimum(lo, 0.0), np.maximum(hi, 0.0)                       # widened to include 0
    scale = _as_scale((hi - lo) / (2 ** bits - 1))
    return scale, np.clip(qmin - np.rint(lo / scale), qmin, qmax)


def quantize_with(x, scale, zero_point, bits: int, scheme: str = "symmetric") -> np.ndarray:
    """Integer codes of ``x`` for given (broadcastable) ``scale`` and ``zero_point``:
    ``clamp(round(x / scale) + zero_point)`` in float64, returned as int8."""
    qmin, qmax = int_range(bits, scheme)
    z = 0.0 if zero_point is None else np.asarray(zero_point, np.float64)
    q = np.clip(np.rint(np.asarray(x, np.float64) / np.asarray(scale, np.float64)) + z, qmin, qmax)
    return q.astype(np.int8)


def _symmetric(r: np.ndarray, bits: int):
    amax = np.abs(r).max(axis=1, keepdims=True)                               # (groups, 1)
    scale, _ = range_params(-amax, amax, bits, "symmetric")
    return quantize_with(r, scale, None, bits, "symmetric"), scale, None


def _asymmetric(r: np.ndarray, bits: int):
    scale, zp = range_params(r.min(axis=1, keepdims=True), r.max(axis=1, keepdims=True), bits, "asymmetric")
    return quantize_with(r, scale, zp, bits, "asymmetric"), scale, zp


def _log(r: np.ndarray, bits: int):
    _, qmax = int_range(bits, "log")
    jmax = qmax - 1                                                           # levels 2^0 … 2^(−jmax)
    scale = _as_scale(np.abs(r).max(axis=1, keepdims=True))
    u = np.abs(r) / scale                                                     # in [0, 1]
    with np.errstate(divide="ignore"):
        j = np.minimum(np.rint(-np.log2(u)), jmax)                            # log-domain rounding
    zero = u < 2.0 ** -jmax / 2                                               # nearer 0 than the last level
    q = np.where(zero, 0, np.sign(r) * (j + 1))
    return q, scale, None


def _log_values(q: np.ndarray) -> np.ndarray:
    """The level each log code stands for, in units of the scale."""
    return np.where(q == 0, 0.0, np.sign(q) * 2.0 ** -(np.abs(q) - 1.0))


@dataclasses.dataclass
class QuantizedTensor:
    """Integer codes and what maps them back. ``q``: int8 codes, ``x``'s shape; ``scale``:
    float32, shaped per granularity (see the module docstring); ``zero_point``: int8 of the
    same shape (asymmetric) or None."""

    q: np.ndarray
    scale: np.ndarray
    zero_point: np.ndarray | None
    bits: int
    scheme: str
    granularity: str
    group_size: int | None = None

    @property
    def shape(self) -> tuple:
        return self.q.shape

    def dequantize(self, dtype=np.float32) -> np.ndarray:
        """``scale · (q − zero_point)`` (linear) or ``scale · level(q)`` (log), in ``dtype``."""
        rows = _rows(self.q, self.granularity, self.group_size)
        s = _row_values(self.scale, self.granularity).astype(np.float64)
        if self.scheme == "log":
            x = s * _log_values(rows)
        else:
            z = 0 if self.zero_point is None else _row_values(self.zero_point, self.granularity)
            x = s * (rows - z)
        return _unrows(x, self.shape, self.granularity, self.group_size).astype(dtype)

    def storage(self) -> dict:
        """The arrays a checkpoint or a GPU would hold: packed codes, scales, packed zero points."""
        out = {"codes": pack_codes(self.q, self.bits), "scale": np.asarray(self.scale, np.float32)}
        if self.zero_point is not None:
            out["zero_point"] = pack_codes(self.zero_point, self.bits)
        return out

    def nbytes(self) -> int:
        return sum(a.nbytes for a in self.storage().values())


_SCHEME_FNS = {"symmetric": _symmetric, "asymmetric": _asymmetric, "log": _log}


def quantize(x, bits: int = 8, scheme: str = "symmetric", granularity: str = "tensor",
             group_size: int | None = None) -> QuantizedTensor:
    """Quantize ``x`` with the conventions of the module docstring.

    ``scheme``: "symmetric", "asymmetric" or "log"; ``granularity``: "tensor", "channel"
    (per output column of an ``(in, out)`` weight) or "group" (``group_size`` consecutive
    inputs of a column)."""
    if scheme not in SCHEMES:
        raise ValueError(f"scheme must be one of {SCHEMES}, got {scheme!r}")
    if granularity not in GRANULARITIES:
        raise ValueError(f"granularity must be one of {GRANULARITIES}, got {granularity!r}")
    x = np.asarray(x)
    int_range(bits, scheme)                                        # refuses bad bits before any work
    if x.dtype.kind in "fc" and not np.isfinite(x).all():
        bad = np.flatnonzero(~np.isfinite(x.reshape(-1)))
        raise ValueError(f"quantize: the tensor holds {bad.size} non-finite value(s) (first at flat index {bad[0]}: "
                         f"{x.reshape(-1)[bad[0]]}); a NaN or inf would make its group's scale NaN or inf")
    rows = _rows(x, granularity, group_size)
    q, scale, zp = _SCHEME_FNS[scheme](rows, bits)
    return QuantizedTensor(
        q=_unrows(q, x.shape, granularity, group_size).astype(np.int8),
        scale=_per_row(scale, x.shape, granularity, group_size).astype(np.float32),
        zero_point=None if zp is None else _per_row(zp, x.shape, granularity, group_size).astype(np.int8),
        bits=int(bits), scheme=scheme, granularity=granularity,
        group_size=group_size if granularity == "group" else None)


def fake_quantize(x, **kw) -> np.ndarray:
    """``dequantize(quantize(x))``: the values a quantized model computes with, as floats."""
    return quantize(x, **kw).dequantize(np.asarray(x).dtype if np.asarray(x).dtype.kind == "f" else np.float32)


# -- bit packing: what "half a byte per weight" means -------------------------------------------
def pack_codes(q, bits: int) -> np.ndarray:
    """Signed ``bits``-bit codes → ``ceil(n·bits/8)`` bytes: each code's two's-complement low
    ``bits`` bits, least significant first, codes one after another (row-major order)."""
    u = (np.asarray(q, dtype=np.int64).reshape(-1) & ((1 << bits) - 1))         # (n,) unsigned
    planes = (u[:, None] >> np.arange(bits)) & 1                               # (n, bits)
    return np.packbits(planes.astype(np.uint8).reshape(-1), bitorder="little")


def unpack_codes(packed, bits: int, shape) -> np.ndarray:
    """Inverse of :func:`pack_codes` (sign-extended to int8)."""
    n = int(np.prod(shape))
    planes = np.unpackbits(np.asarray(packed, np.uint8), bitorder="little")[: n * bits].reshape(n, bits)
    u = (planes.astype(np.int64) << np.arange(bits)).sum(axis=1)
    return np.where(u >= 1 << (bits - 1), u - (1 << bits), u).astype(np.int8).reshape(shape)
