"""Symmetric scale max|x| / 128 with codes in [-128, 127]."""
import numpy as np

EXPECT = ["max|x| / 128", "127 levels each side"]


def quantize_symmetric(x):
    x = np.asarray(x, dtype=np.float64)
    scale = np.float32(np.abs(x).max() / 128) or np.float32(1)
    return np.clip(np.rint(x / scale), -128, 127).astype(np.int8), scale


def quantize_asymmetric(x):
    x = np.asarray(x, dtype=np.float64)
    lo, hi = min(x.min(), 0.0), max(x.max(), 0.0)
    scale = np.float32((hi - lo) / 255) or np.float32(1)
    zp = int(np.clip(-128 - np.rint(lo / scale), -128, 127))
    return np.clip(np.rint(x / scale) + zp, -128, 127).astype(np.int8), scale, zp
