"""The formula as written, exp of raw log-sum-exps: right for small scores, inf near 1000."""
import numpy as np

EXPECT = ["overflows", "subtract the larger lse"]


def merge(out1, lse1, out2, lse2):
    e1, e2 = np.exp(lse1), np.exp(lse2)
    total = e1 + e2
    return (e1[..., None] * out1 + e2[..., None] * out2) / total[..., None], np.log(total)
