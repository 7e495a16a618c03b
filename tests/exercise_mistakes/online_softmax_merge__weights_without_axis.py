"""Multiplies the (..., T) weights into the (..., T, hs) outputs without a last axis: NumPy
broadcasts them against hs — an error, or the wrong axis when T = hs."""
import numpy as np

EXPECT = ["could not be broadcast", "along the wrong axis"]


def merge(out1, lse1, out2, lse2):
    lse = np.logaddexp(lse1, lse2)
    return np.exp(lse1 - lse) * out1 + np.exp(lse2 - lse) * out2, lse
