"""Zero point with the wrong sign: -128 + round(min / scale)."""
import numpy as np

EXPECT = ["zero_point expected -64, got -128", "wrong sign"]


def quantize_symmetric(x):
    x = np.asarray(x, dtype=np.float64)
    scale = np.float32(np.abs(x).max() / 127) or np.float32(1)
    return np.clip(np.rint(x / scale), -127, 127).astype(np.int8), scale


def quantize_asymmetric(x):
    x = np.asarray(x, dtype=np.float64)
    lo, hi = min(x.min(), 0.0), max(x.max(), 0.0)
    scale = np.float32((hi - lo) / 255) or np.float32(1)
    zp = int(np.clip(-128 + np.rint(lo / scale), -128, 127))
    return np.clip(np.rint(x / scale) + zp, -128, 127).astype(np.int8), scale, zp
