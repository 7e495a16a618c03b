"""Rounds with the bias trick and no NaN guard: a NaN whose mantissa is all low or all set carries into inf or ±0."""
EXPECT = ["NaN must stay NaN"]

import numpy as np
def round_to_fp16(x):
    x = np.asarray(x, dtype=np.float32)
    b = x.view(np.uint32)
    lsb = (b >> np.uint32(13)) & np.uint32(1)
    y = ((b + np.uint32(0x0FFF) + lsb) & ~np.uint32(0x1FFF)).view(np.float32)
    sub = np.rint(x / np.float32(2.0 ** -24)) * np.float32(2.0 ** -24)
    y = np.where(np.abs(x) < 2.0 ** -14, sub, y)
    y = np.where(np.abs(y) > 65504, np.copysign(np.float32(np.inf), x), y)
    return y.astype(np.float32)
