"""A right answer: the merged log-sum-exp by np.logaddexp, each block weighted by its share."""
import numpy as np

EXPECT = []


def merge(out1, lse1, out2, lse2):
    lse = np.logaddexp(lse1, lse2)                       # log(e^lse1 + e^lse2), no overflow
    w1 = np.exp(lse1 - lse)[..., None]                   # (..., T, 1): one weight per query row
    w2 = np.exp(lse2 - lse)[..., None]
    return w1 * out1 + w2 * out2, lse
