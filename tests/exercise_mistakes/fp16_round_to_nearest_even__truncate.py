"""Truncates: clears the 13 low mantissa bits without rounding."""
import numpy as np

EXPECT = ["truncated"]


def round_to_fp16(x):
    x = np.asarray(x, dtype=np.float32)
    y = (x.view(np.uint32) & ~np.uint32(0x1FFF)).view(np.float32)
    y = np.where(np.abs(x) < 2.0 ** -14, np.trunc(x / np.float32(2.0 ** -24)) * np.float32(2.0 ** -24), y)
    y = np.where(np.abs(y) > 65504, np.copysign(np.float32(np.inf), x), y)
    return np.where(np.isnan(x), x, y).astype(np.float32)
