"""A right solution written another way: the coefficients of sbh and as²b looked up per case
in a small table, then one formula. Must pass."""

EXPECT = []


def activation_bytes_per_layer(s, b, h, a, t=1, sp=False, recompute="none"):
    replicated = 10 / t if sp else 10            # LayerNorm and dropout regions
    table = {
        "none": (replicated + 24 / t, 5 / t),
        "selective": (replicated + 24 / t, 0.0),
        "full": (2 / t if sp else 2, 0.0),
    }
    alpha, beta = table[recompute]
    return alpha * s * b * h + beta * a * s * s * b
