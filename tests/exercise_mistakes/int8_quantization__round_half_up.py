"""Rounds with floor(v + 0.5): exact ties go up instead of to even."""
import numpy as np

EXPECT = ["ties (scale exactly 1/16)", "round half UP", "half to EVEN"]


def quantize_symmetric(x):
    x = np.asarray(x, dtype=np.float64)
    scale = np.float32(np.abs(x).max() / 127) or np.float32(1)
    return np.clip(np.floor(x / scale + 0.5), -127, 127).astype(np.int8), scale


def quantize_asymmetric(x):
    x = np.asarray(x, dtype=np.float64)
    lo, hi = min(x.min(), 0.0), max(x.max(), 0.0)
    scale = np.float32((hi - lo) / 255) or np.float32(1)
    zp = int(np.clip(-128 - np.floor(lo / scale + 0.5), -128, 127))
    return np.clip(np.floor(x / scale + 0.5) + zp, -128, 127).astype(np.int8), scale, zp
