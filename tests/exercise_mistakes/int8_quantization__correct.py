"""A right answer written another way: element by element in plain Python (round() is half to
even), the float32 scale via struct."""
import struct

import numpy as np

EXPECT = []


def _f32(v):
    return struct.unpack("f", struct.pack("f", v))[0]


def quantize_symmetric(x):
    x = np.asarray(x)
    vals = [float(v) for v in x.reshape(-1)]
    scale = _f32(max(abs(v) for v in vals) / 127) or 1.0
    q = [min(max(round(v / scale), -127), 127) for v in vals]
    return np.array(q, dtype=np.int8).reshape(x.shape), scale


def quantize_asymmetric(x):
    x = np.asarray(x)
    vals = [float(v) for v in x.reshape(-1)]
    lo, hi = min(min(vals), 0.0), max(max(vals), 0.0)
    scale = _f32((hi - lo) / 255) or 1.0
    zero_point = min(max(-128 - round(lo / scale), -128), 127)
    q = [min(max(round(v / scale) + zero_point, -128), 127) for v in vals]
    return np.array(q, dtype=np.int8).reshape(x.shape), scale, zero_point
