"""Wrong: full recomputation keeps the whole 2·sbh input even under sequence parallelism,
where each rank holds only its s/t shard."""

EXPECT = ["2·sbh/t, under sequence parallelism"]


def activation_bytes_per_layer(s, b, h, a, t=1, sp=False, recompute="none"):
    sbh, as2b = s * b * h, a * s * s * b
    if recompute == "full":
        return 2 * sbh
    core = 0 if recompute == "selective" else 5 * as2b / t
    return sbh * (10 / t if sp else 10) + 24 * sbh / t + core
