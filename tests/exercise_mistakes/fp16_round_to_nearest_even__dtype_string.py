"""Wrong: the half cast spelt as a dtype string, "e"; resolved all the same."""
import numpy as np

EXPECT = ["`numpy.float16` (as 'e')"]


def round_to_fp16(x):
    return np.asarray(x, dtype="e").astype("f4")
