"""minidist.estimate: the analytic calculators.

Closed-form answers to "how much memory, how many bytes, how many FLOPs, how big a bubble"
for any model size and cluster, from the papers' formulas. The measured numbers of a
simulated run are checked against these. One module per question:

* :mod:`.memory`       model states per device per ZeRO stage, with offload (ZeRO, ZeRO-Offload)
* :mod:`.activations`  activation memory per layer, with TP/SP and checkpointing (Korthikanti 2022)
* :mod:`.comm`         bytes each rank sends per step: DP/ZeRO, tensor and pipeline parallel
* :mod:`.flops`        parameter count, 6·N·D and the count with attention, training time
* :mod:`.pipeline`     bubble and peak in-flight micro-batches per pipeline schedule
* :mod:`.grid3d`       per pipeline rank of a DP × TP × PP layout: model states and bytes sent, exact
* :mod:`.moe_grid`     the experts of a mixture of experts per pipeline rank, for grid3d
* :mod:`.config`       :func:`estimate`: all of the above for a training config
* :mod:`.cli`          ``python -m minidist.estimate --params 7.5B --dp 64 --zero all``

Quick check against the ZeRO paper (7.5B parameters, 64 GPUs, Adam, mixed precision)::

    >>> from minidist.estimate import model_state_memory
    >>> [round(model_state_memory(7.5e9, dp=64, stage=s)["total"] / 1e9, 1) for s in range(4)]
    [120.0, 31.4, 16.6, 1.9]
"""
from .activations import (
    activation_memory,
    layer_activation_bytes,
    layer_activation_terms,
)
from .comm import comm_volume
from .config import estimate
from .flops import gpt2_param_count, training_flops, training_time
from .memory import bytes_per_param, model_state_memory
from .pipeline import peak_in_flight, pipeline_bubble

__all__ = [
    "activation_memory",
    "bytes_per_param",
    "comm_volume",
    "estimate",
    "gpt2_param_count",
    "layer_activation_bytes",
    "layer_activation_terms",
    "model_state_memory",
    "peak_in_flight",
    "pipeline_bubble",
    "training_flops",
    "training_time",
]
