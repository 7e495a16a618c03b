"""Does not divide by t under sequence parallelism (treats SP like TP alone)."""
import math

EXPECT = ['not dividing by t under SP']


def layer_bytes(s, b, h, a, t=1, sp=False, granularity="none"):
    sbh, as2b = s * b * h, a * s * s * b
    split = 1                        # what TP alone replicates, SP cuts along s
    if granularity == "full":
        return 2 * sbh / split                    # the layer's input
    replicated = (2 + 2 + 1 + 1 + 2 + 2) * sbh    # ln_1, ln_2 inputs; two dropout masks; QKV and fc inputs
    inside = (4 + 2 + 2 + 8 + 8) * sbh            # Q, K; V; proj input; GeLU input and output
    core = (2 + 1 + 2) * as2b if granularity == "none" else 0
    return replicated / split + inside / t + core / t


def stage_bytes(s, b, h, a, layers, t=1, sp=False, granularity="none", method="uniform", num_layers=1):
    if granularity != "full":
        return layers * layer_bytes(s, b, h, a, t, sp, granularity)
    if method == "uniform":
        return math.ceil(layers / num_layers) * layer_bytes(s, b, h, a, t, sp, "full")
    checkpointed = min(num_layers, layers)
    return (checkpointed * layer_bytes(s, b, h, a, t, sp, "full")
            + (layers - checkpointed) * layer_bytes(s, b, h, a, t, sp, "none"))
