"""A right solution written another way: integer arithmetic on the bits with a constant named
`half` (half an fp16 unit in the last place, the rounding bias) and a helper named
`to_bits`; subnormals by np.rint on the 2**-24 grid. Must pass: the names are the student's,
no half-precision type is ever used."""
import numpy as np

EXPECT = []

half = np.uint32(1 << 12)          # half of the 2**13 dropped by fp16's shorter mantissa
low_mask = np.uint32((1 << 13) - 1)


def to_bits(x):
    return np.ascontiguousarray(x, dtype=np.float32).view(np.uint32)


def round_to_fp16(x):
    x = np.asarray(x, dtype=np.float32)
    b = to_bits(x)
    sign = b & np.uint32(0x80000000)
    mag = b & np.uint32(0x7FFFFFFF)
    keep_odd = (mag >> np.uint32(13)) & np.uint32(1)
    rounded = (mag + (half - np.uint32(1)) + keep_odd) & ~low_mask
    y = (rounded | sign).view(np.float32)
    tiny = np.abs(x) < np.float32(2.0 ** -14)
    sub = (np.rint(x.astype(np.float64) / 2.0 ** -24) * 2.0 ** -24).astype(np.float32)
    y = np.where(tiny, sub, y)
    y = np.where(np.abs(y) > 65504, np.copysign(np.float32(np.inf), x), y)
    y = np.where(np.isnan(x), x, y)
    return np.asarray(y, dtype=np.float32).reshape(x.shape)
