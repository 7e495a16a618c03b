"""Wrong: Python's struct module packs IEEE half floats with the "e" format: that is a half
cast too."""
import struct

import numpy as np

EXPECT = ["`numpy.float16` (as struct format '<e')"]


def round_to_fp16(x):
    flat = [struct.unpack("<e", struct.pack("<e", float(v)))[0] if abs(v) < 65520 or not np.isfinite(v)
            else float(np.copysign(np.inf, v)) for v in np.asarray(x).reshape(-1)]
    return np.array(flat, dtype=np.float32).reshape(np.shape(x))
