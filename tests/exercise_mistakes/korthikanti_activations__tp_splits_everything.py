"""Divides everything by t even without sequence parallelism."""
EXPECT = ["replicated"]


def activation_bytes_per_layer(s, b, h, a, t=1, sp=False, recompute="none"):
    sbh, as2b = s * b * h, a * s * s * b
    if recompute == "full":
        return 2 * sbh
    core = 0 if recompute == "selective" else 5 * as2b
    return (34 * sbh + core) / t
