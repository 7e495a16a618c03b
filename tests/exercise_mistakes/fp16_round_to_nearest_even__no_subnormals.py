"""Rounds every value as if it were an fp16 normal: subnormals keep too many bits."""
import numpy as np

EXPECT = ["subnormal"]


def round_to_fp16(x):
    x = np.asarray(x, dtype=np.float32)
    b = x.view(np.uint32)
    lsb = (b >> np.uint32(13)) & np.uint32(1)
    y = ((b + np.uint32(0x0FFF) + lsb) & ~np.uint32(0x1FFF)).view(np.float32)
    y = np.where(np.abs(y) > 65504, np.copysign(np.float32(np.inf), x), y)
    return np.where(np.isnan(x), x, y).astype(np.float32)
