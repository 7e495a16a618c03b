"""A right answer written the NumPy way: whole-array operations, np.rint for half to even."""
import numpy as np

EXPECT = []


def _scale(span, levels):
    s = np.float32(span / levels)
    return np.float32(1.0) if s == 0 else s


def quantize_symmetric(x):
    x64 = np.asarray(x, dtype=np.float64)
    scale = _scale(np.abs(x64).max(), 127)
    q = np.clip(np.rint(x64 / np.float64(scale)), -127, 127)
    return q.astype(np.int8), scale


def quantize_asymmetric(x):
    x64 = np.asarray(x, dtype=np.float64)
    lo, hi = np.minimum(x64.min(), 0.0), np.maximum(x64.max(), 0.0)
    scale = _scale(hi - lo, 255)
    zero_point = int(np.clip(-128 - np.rint(lo / np.float64(scale)), -128, 127))
    q = np.clip(np.rint(x64 / np.float64(scale)) + zero_point, -128, 127)
    return q.astype(np.int8), scale, zero_point
