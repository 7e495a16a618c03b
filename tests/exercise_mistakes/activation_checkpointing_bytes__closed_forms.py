"""A right solution written another way: Table 2's closed forms as coefficients of sbh and
as²b, and the units of a stage counted with integer arithmetic. Must pass."""
EXPECT = []


def layer_bytes(s, b, h, a, t=1, sp=False, granularity="none"):
    sbh, as2b = s * b * h, a * s * s * b
    if granularity == "full":
        return 2 * sbh / t if sp else 2 * sbh
    sbh_coefficient = 34 / t if sp else 10 + 24 / t
    core_coefficient = 5 / t if granularity == "none" else 0
    return sbh_coefficient * sbh + core_coefficient * as2b


def stage_bytes(s, b, h, a, layers, t=1, sp=False, granularity="none", method="uniform", num_layers=1):
    whole = layer_bytes(s, b, h, a, t, sp, "none" if granularity == "full" else granularity)
    if granularity != "full":
        return layers * whole
    checkpoint = layer_bytes(s, b, h, a, t, sp, "full")
    if method == "uniform":
        units = (layers + num_layers - 1) // num_layers
        return units * checkpoint
    first = num_layers if num_layers < layers else layers
    return first * checkpoint + (layers - first) * whole
