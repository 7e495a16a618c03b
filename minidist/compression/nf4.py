"""NF4: QLoRA's 4-bit NormalFloat with double quantization (Dettmers et al. 2023, §3).

Pretrained weights are roughly normal, so NF4 puts its 16 levels at *quantiles* of N(0, 1)
instead of evenly (the source notes' non-linear quantization "adapted to the data's
distribution"): each of the 16 codes should be used about equally often.

**The table** (:func:`nf4_table`). 8 positive levels at the normal quantiles of 8 probabilities
evenly spaced from ``δ = 0.9677083`` (≈ 1 − ½(1/32 + 1/30)) down to 0.5 (excluded), 7
negative ones from 7 probabilities over the same span, and an exact 0; all divided by the
largest, so the table spans [−1, 1]. One more positive than negative level: NF4 is
asymmetric so that 0 is a code. bitsandbytes (``create_normal_map``) spaces the
probabilities with float32 ``torch.linspace`` (start + i·step below the midpoint,
end − (n−1−i)·step from it, in float32) and divides in float32; :func:`nf4_table` does the
same, which gives the published table (QLoRA's appendix; bitsandbytes' ``nf4`` code book)
to the last bit.

**Blockwise quantization** (:func:`quantize_nf4`). The weight is read in the order of torch's
``(out, in)`` layout (``W.T`` flattened: consecutive inputs of one output column) and cut
into blocks of ``block_size`` = 64 values (the last one may be shorter). Each block's
absmax ``c1`` (float32) scales it to [−1, 1]; each value gets the code of the nearest table
entry (ties to the lower code); the 4-bit codes are packed two per byte.

**Double quantization.** ``c1`` costs 32/64 = 0.5 bits per weight; QLoRA quantizes the
``c1`` themselves: subtract their mean (float32 of the exact mean; they are all positive),
cut them into blocks of 256, scale each block by its absmax / 448 (``c2``, float32) and round
``(c1 − mean) / c2`` (computed in float32) to 8-bit floats (FP8 E4M3, 448 its largest value;
rounding by :func:`minidist.numerics.quantize`, to nearest, ties to even). This is the
paper's "8-bit Floats with a blocksize of 256"; bitsandbytes' code uses its own 8-bit
dynamic code book for the same step. Storage per weight: 4 + 8/64 + 32/(64·256) ≈ 4.127 bits instead of 4.5
(QLoRA §3: "from 0.5 bits to 0.127 bits per parameter" for the constants).
"""
from __future__ import annotations

import dataclasses
import math
from statistics import NormalDist

import numpy as np

from ..numerics import from_bits, to_bits

NF4_OFFSET = 0.9677083          # δ of bitsandbytes' create_normal_map
BLOCK_SIZE = 64                 # QLoRA's block of weights per absmax
DQ_BLOCK_SIZE = 256             # QLoRA's block of absmax constants per second-level scale
FP8_MAX = 448.0                 # largest FP8 E4M3 value


def _linspace32(start: float, end: float, n: int) -> list[float]:
    """``torch.linspace(start, end, n)`` in float32, as PyTorch's CPU kernel computes it."""
    f = np.float32
    a, b = f(start), f(end)
    step = f((b - a) / f(n - 1))
    return [float(f(a + step * f(i))) if i < n // 2 else float(f(b - step * f(n - 1 - i))) for i in range(n)]


def nf4_table() -> np.ndarray:
    """The 16 NF4 levels in code order (code 0 = −1, code 7 = 0, code 15 = 1), float32."""
    ppf = NormalDist().inv_cdf
    positive = [ppf(p) for p in _linspace32(NF4_OFFSET, 0.5, 9)[:-1]]        # 8 levels
    negative = [-ppf(p) for p in _linspace32(NF4_OFFSET, 0.5, 8)[:-1]]       # 7 levels
    v = np.sort(np.array(positive + [0.0] + negative, dtype=np.float32))
    return (v / v.max()).astype(np.float32)


NF4 = nf4_table()


def nearest_code(u: np.ndarray, table: np.ndarray = NF4) -> np.ndarray:
    """Index of the nearest table entry to each ``u`` (ties to the lower index), uint8."""
    d = np.abs(np.asarray(u, np.float64)[..., None] - table.astype(np.float64))   # (..., 16)
    return d.argmin(axis=-1).astype(np.uint8)


def _blocks(flat: np.ndarray, size: int) -> np.ndarray:
    """(n_blocks, size), the last block padded with zeros."""
    n_blocks = -(-flat.size // size)
    out = np.zeros(n_blocks * size, flat.dtype)
    out[: flat.size] = flat
    return out.reshape(n_blocks, size)


def _absmax(blocks: np.ndarray) -> np.ndarray:
    m = np.abs(blocks).max(axis=1).astype(np.float32)
    return np.where(m == 0, np.float32(1), m)                                     # an all-zero block: scale 1


@dataclasses.dataclass
class DoubleQuantized:
    """The absmax constants ``c1`` stored as FP8 codes: ``c1 ≈ fp8(codes)·c2[block] + mean``."""

    codes: np.ndarray          # uint8 FP8 E4M3 bit patterns, one per c1
    c2: np.ndarray             # float32, one per DQ_BLOCK_SIZE constants
    mean: np.float32
    n: int

    def dequantize(self) -> np.ndarray:
        c2 = np.repeat(self.c2, DQ_BLOCK_SIZE)[: self.n]
        return (from_bits(self.codes, "fp8_e4m3", np.float32) * c2 + self.mean).astype(np.float32)

    def storage(self) -> dict:
        return {"c1_codes": self.codes, "c2": self.c2, "c1_mean": np.asarray([self.mean], np.float32)}


def double_quantize(c1: np.ndarray) -> DoubleQuantized:
    """QLoRA's second quantization of the first-level constants (module docstring)."""
    c1 = np.asarray(c1, np.float32)
    mean = np.float32(math.fsum(c1.astype(np.float64)) / c1.size)           # exact sum, then float32
    centred = (c1 - mean).astype(np.float32)
    blocks = _blocks(centred, DQ_BLOCK_SIZE)                                     # (n2, 256)
    c2 = (_absmax(blocks) / np.float32(FP8_MAX)).astype(np.float32)
    codes = to_bits((blocks / c2[:, None]).astype(np.float32), "fp8_e4m3", saturate=True)
    return DoubleQuantized(codes.reshape(-1)[: c1.size], c2, mean, c1.size)


@dataclasses.dataclass
class NF4Tensor:
    """Packed NF4 codes of a weight and its (possibly double-quantized) block constants."""

    packed: np.ndarray                  # uint8, two codes per byte (low nibble first)
    absmax: np.ndarray | None           # float32 c1 per block (no double quantization)
    dq: DoubleQuantized | None          # or c1 double-quantized
    shape: tuple
    block_size: int = BLOCK_SIZE

    def codes(self) -> np.ndarray:
        """The 4-bit codes (0…15) in block order (``W.T`` flattened)."""
        n = int(np.prod(self.shape))
        return np.stack([self.packed & 0xF, self.packed >> 4], axis=1).reshape(-1)[:n]

    def block_scales(self) -> np.ndarray:
        return self.absmax if self.dq is None else self.dq.dequantize()

    def dequantize(self, dtype=np.float32) -> np.ndarray:
        n = int(np.prod(self.shape))
        c1 = np.repeat(self.block_scales(), self.block_size)[:n]
        flat = NF4[self.codes()].astype(np.float32) * c1                          # (n,) in W.T order
        return flat.reshape(self.shape[1], self.shape[0]).T.astype(dtype)

    def storage(self) -> dict:
        out = {"codes": self.packed}
        out.update({"absmax": self.absmax} if self.dq is None else self.dq.storage())
        return out

    def nbytes(self) -> int:
        return sum(a.nbytes for a in self.storage().values())


def quantize_nf4(w, block_size: int = BLOCK_SIZE, double_quant: bool = True) -> NF4Tensor:
    """NF4-quantize a 2-D weight ``(in_features, out_features)`` (module docstring)."""
    w = np.asarray(w, np.float32)
    if w.ndim != 2:
        raise ValueError(f"quantize_nf4 expects a 2-D weight (in_features, out_features), got shape {w.shape}")
    if isinstance(block_size, bool) or not isinstance(block_size, (int, np.integer)) or block_size < 1:
        raise ValueError(f"quantize_nf4: block_size must be a positive integer (QLoRA's 64), got {block_size!r}")
    if not np.isfinite(w).all():          # one NaN would reach every block through the double quantization
        bad = np.flatnonzero(~np.isfinite(w.reshape(-1)))
        raise ValueError(f"quantize_nf4: the weight holds {bad.size} non-finite value(s) (the first at flat index "
                         f"{bad[0]}): a NaN or inf has no 4-bit code; fix or drop the weight before quantizing")
    flat = w.T.reshape(-1)                                                          # torch's (out, in) order
    blocks = _blocks(flat, block_size)                                              # (n_blocks, 64)
    c1 = _absmax(blocks)
    codes = nearest_code(blocks / c1[:, None]).reshape(-1)[: flat.size]
    if codes.size % 2:
        codes = np.append(codes, np.uint8(0))
    packed = (codes[0::2] | (codes[1::2] << 4)).astype(np.uint8)
    if double_quant:
        return NF4Tensor(packed, None, double_quantize(c1), w.shape, block_size)
    return NF4Tensor(packed, c1, None, w.shape, block_size)
