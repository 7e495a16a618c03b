"""Averages the two outputs, as if each block held half of the softmax mass."""
import numpy as np

EXPECT = ["averaged the two outputs", "exp(lse_i − lse)"]


def merge(out1, lse1, out2, lse2):
    return (out1 + out2) / 2, np.logaddexp(lse1, lse2)
