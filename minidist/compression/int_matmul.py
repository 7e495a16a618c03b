"""``int8 × int8 → int32``: the integer matrix product of a quantized linear layer, emulated.

A W8A8 layer (int8 weights *and* int8 activations) runs its matmul on the integer units
(Jacob et al. 2018, §2.3; NVIDIA's IMMA tensor cores): every product of two int8 numbers is
exact (|q| ≤ 128, so ≤ 2^14) and is accumulated in int32. With ``y = x @ W``,
``x ≈ s_x (q_x − z_x)`` (per tensor, asymmetric) and ``W ≈ s_w[n] · q_w`` (per output
channel ``n``, symmetric):

    y[m, n] ≈ s_x · s_w[n] · Σ_k (q_x[m, k] − z_x) · q_w[k, n]
            = s_x · s_w[n] · ( Σ_k q_x[m, k] q_w[k, n]  −  z_x · Σ_k q_w[k, n] )
                               └──── int32 accumulator ──┘    └ precomputed column sums ┘

(Jacob et al. 2018, eq. 7, with the weight zero point 0). :func:`int8_matmul` is the first
term, computed in int32 exactly as the hardware does; :func:`zero_point_correction` the
second; :func:`dequantize_accumulator` the explicit step back to floats,
``s_x · s_w[n] · acc + bias``. (An integer-only pipeline would instead *requantize* the
int32 result to int8 with a fixed-point multiplier ``M = s_x s_w / s_y``, Jacob et al.
§2.2; minidist returns floats to the next, float, op.)

No overflow: each term is at most 2^14 in magnitude, so an int32 accumulator is exact for
``k ≤ 2^17 − 1 = 131071`` terms; :func:`int8_matmul` refuses longer ones rather than wrap.

Cost, charged to the current device (:meth:`minidist.device.Device.compute`): the matmul
``2·m·n·k`` operations as op ``int8_matmul`` at the int8 rate, ``INT8_SPEEDUP`` × the
device's dense rate (A100: 624 TOPS int8 vs 312 TFLOP/s bf16, NVIDIA's A100 datasheet);
quantizing the activations ``m·k`` (op ``quantize``); the correction and the dequantize
``2·m·n`` each (op ``dequantize``).
"""
from __future__ import annotations

import numpy as np

from ..device import current_device
from .quantize import quantize_with

INT8_SPEEDUP = 2.0                 # int8 tensor-core rate ÷ bf16 rate (A100, H100)
MAX_K = (2 ** 31 - 1) // 2 ** 14   # longest exact int32 accumulation of int8 × int8 products


def _charge(name: str, flops: int, int8: bool = False) -> None:
    dev = current_device()
    if dev is not None:
        rate = dev.spec.flops * INT8_SPEEDUP if int8 else None
        dev.compute(name, int(flops), matmul=int8, flops_per_s=rate)


def int8_matmul(a, b) -> np.ndarray:
    """``a (m, k) int8 @ b (k, n) int8`` accumulated in int32: exact, as the integer units do."""
    a, b = np.asarray(a), np.asarray(b)
    if a.dtype != np.int8 or b.dtype != np.int8:
        raise TypeError(f"int8_matmul takes int8 operands, got {a.dtype} and {b.dtype}")
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[0]:
        raise ValueError(f"int8_matmul: shapes {a.shape} and {b.shape} are not (m, k) and (k, n)")
    m, k = a.shape
    n = b.shape[1]
    if k > MAX_K:
        raise ValueError(f"k = {k} int8 products could overflow an int32 accumulator (at most {MAX_K})")
    acc = a.astype(np.int32) @ b.astype(np.int32)            # (m, n) int32; exact: |acc| < 2^31
    _charge("int8_matmul", 2 * m * n * k, int8=True)
    return acc


def zero_point_correction(acc: np.ndarray, zero_point: int, q_w: np.ndarray) -> np.ndarray:
    """``acc − z_x · Σ_k q_w[k, n]``: the accumulator of ``(q_x − z_x) @ q_w`` (int32)."""
    colsum = q_w.astype(np.int32).sum(axis=0)                 # (n,), precomputed once per weight
    _charge("dequantize", 2 * acc.size)
    return acc - np.int32(zero_point) * colsum


def dequantize_accumulator(acc: np.ndarray, x_scale: float, w_scale: np.ndarray, bias=None) -> np.ndarray:
    """``s_x · s_w[n] · acc + bias`` in float32: the explicit dequantize step."""
    _charge("dequantize", 2 * acc.size)
    y = acc.astype(np.float64) * (np.float64(x_scale) * np.asarray(w_scale, np.float64))
    if bias is not None:
        y = y + bias
    return y.astype(np.float32)


def quantize_activation(x: np.ndarray, scale: float, zero_point: int) -> np.ndarray:
    """int8 codes of the activations, ``clamp(round(x / s_x) + z_x, −128, 127)``, charged ``m·k``."""
    _charge("quantize", x.size)
    return quantize_with(x, scale, zero_point, 8, "asymmetric")


def w8a8_linear(x2: np.ndarray, q_w: np.ndarray, w_scale: np.ndarray, x_scale: float, x_zero_point: int,
                bias=None) -> np.ndarray:
    """A whole W8A8 linear on 2-D activations ``x2 (m, k)``: quantize → int32 matmul →
    zero-point correction → dequantize. Returns float32 ``(m, n)``."""
    q_x = quantize_activation(x2, x_scale, x_zero_point)     # (m, k) int8
    acc = int8_matmul(q_x, q_w)                               # (m, n) int32
    acc = zero_point_correction(acc, x_zero_point, q_w)
    return dequantize_accumulator(acc, x_scale, w_scale, bias)
