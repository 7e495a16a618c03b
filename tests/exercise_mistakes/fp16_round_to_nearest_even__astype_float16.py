"""Wrong: NumPy's half cast does the whole exercise; the values are right, the rules refuse it."""
import numpy as np

EXPECT = ["`numpy.float16`", "Not allowed"]


def round_to_fp16(x):
    return x.astype(np.float16).astype(np.float32)
