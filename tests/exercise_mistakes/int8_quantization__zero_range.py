"""Forgets the all-zero case of the statement: its scale is 0, and x / 0 gives NaN codes."""
import numpy as np

EXPECT = ["an all-zero x = [0, 0, 0]"]


def quantize_symmetric(x):
    x64 = np.asarray(x, dtype=np.float64)
    scale = np.float32(np.abs(x64).max() / 127)          # forgets the all-zero case
    q = np.clip(np.rint(x64 / scale), -127, 127).astype(np.int8)
    return q, scale


def quantize_asymmetric(x):
    x64 = np.asarray(x, dtype=np.float64)
    lo, hi = min(x64.min(), 0.0), max(x64.max(), 0.0)
    scale = np.float32((hi - lo) / 255)                    # forgets the all-zero case
    zp = int(np.clip(-128 - np.rint(lo / scale), -128, 127))
    q = np.clip(np.rint(x64 / scale) + zp, -128, 127).astype(np.int8)
    return q, scale, zp
