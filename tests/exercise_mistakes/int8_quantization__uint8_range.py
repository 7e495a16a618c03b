"""PyTorch's quint8 habit: zero point -round(min / scale) and codes in [0, 255]."""
import numpy as np

EXPECT = ["unsigned range [0, 255]"]


def quantize_symmetric(x):
    x = np.asarray(x, dtype=np.float64)
    scale = np.float32(np.abs(x).max() / 127) or np.float32(1)
    return np.clip(np.rint(x / scale), -127, 127).astype(np.int8), scale


def quantize_asymmetric(x):
    x = np.asarray(x, dtype=np.float64)
    lo, hi = min(x.min(), 0.0), max(x.max(), 0.0)
    scale = np.float32((hi - lo) / 255) or np.float32(1)
    zp = int(-np.rint(lo / scale))
    return np.clip(np.rint(x / scale) + zp, 0, 255).astype(np.int64), scale, zp
