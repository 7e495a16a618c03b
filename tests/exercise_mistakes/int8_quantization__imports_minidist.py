"""Calls minidist's own quantizer: the rules of the exercise forbid it."""
from minidist.compression import quantize as q

EXPECT = ["imports `minidist.compression`"]


def quantize_symmetric(x):
    t = q.quantize(x, 8, "symmetric")
    return t.q, t.scale


def quantize_asymmetric(x):
    t = q.quantize(x, 8, "asymmetric")
    return t.q, t.scale, int(t.zero_point)
