"""A right 1F1B whose micro-batch numbers are NumPy integers (taken from np.arange): must pass."""
import numpy as np

EXPECT = []


def schedule_1f1b(p, m):
    out = []
    for r in range(p):
        w = min(p - r - 1, m)
        mbs = np.arange(m)
        prog = [("F", i) for i in mbs[:w]]
        for k in range(m - w):
            prog += [("F", mbs[w + k]), ("B", mbs[k])]
        prog += [("B", i) for i in mbs[m - w:]]
        out.append(prog)
    return out
