"""minidist.parallel: every way of splitting training over ranks, one folder per parallelism.

Read this table first; each folder's ``__init__`` is the table of contents of its files.

=========================  ===================================================================
where                      what a student finds there
=========================  ===================================================================
:mod:`.grid`               the process grid: ordered dimensions tp-cp-ep-dp-pp (Megatron's
                           rank order), every group derived by ``comm.split``
:mod:`.split`              cutting and joining arrays by the split each parameter carries
:mod:`.data`               data parallelism: the parameter server (naive), DDP with
                           buckets, ZeRO-1/2/3 and ZeRO-Offload
:mod:`.tensor`             tensor and sequence parallelism (Megatron-LM, Korthikanti et al.
                           2022): f/g, column/row/vocab-parallel layers, the TP layer factory
:mod:`.pipeline`           pipeline parallelism: eight schedules as data (naive …
                           dualpipe_v), a validator/simulator, one executor over ``grid.pp``
:mod:`.context`            context parallelism: the sequence split over ``grid.cp``, ring
                           attention (online softmax, zigzag) and Ulysses (all-to-all)
=========================  ===================================================================

:func:`build_strategy` is the one place a strategy is built from a (validated) DeepSpeed-style
config::

    strategy = build_strategy(cfg, model, optimizer, comm)   # one object per rank
"""
from __future__ import annotations

from ..defaults import zero_strategy
from ..device import current_device
from ..distributed.inproc import single_rank_comm
from .data.base import LocalStrategy
from .data.ddp import DDP
from .data.buckets import Bucket, element_bytes, make_buckets, padded_elements, shard_elements
from .data.offload import HostOptimizer
from .data.parameter_server import ParameterServer
from .data.zero1 import ZeRO1
from .data.zero2 import ZeRO2
from .data.zero3 import ZeRO3, zero3_units

# the names are minidist.defaults.STRATEGIES; each class carries its own as ``.name``
STRATEGIES = {cls.name: cls for cls in (LocalStrategy, ParameterServer, DDP, ZeRO1, ZeRO2, ZeRO3)}


def strategy_name(cfg: dict) -> str:
    """Which strategy a config asks for: "ddp", "parameter_server", "zero1".."zero3"."""
    stage = cfg["zero_optimization"]["stage"]
    return zero_strategy(stage) if stage else cfg["parallel"]["data_parallel"]


def build_strategy(cfg: dict, model, optimizer, comm, precision=None):
    """The strategy object of this rank for a validated config (``comm`` None = one rank).
    ``precision``: the :class:`~minidist.precision.Precision` of an fp16/bf16 run, or None."""
    z = cfg["zero_optimization"]
    if comm is None and z["stage"] and z["offload_optimizer"]["device"] == "cpu":
        # ZeRO-Offload on one data-parallel rank (DeepSpeed's single-GPU case: the optimizer's
        # states and step on the host): the ZeRO strategy over a world of one, on this rank's device
        comm = single_rank_comm()
        comm.device = current_device() or comm.device
    name = strategy_name(cfg) if comm is not None else LocalStrategy.name
    clip = cfg.get("gradient_clipping", 0.0)
    if name == LocalStrategy.name:
        return LocalStrategy(model, optimizer, comm, clip=clip, precision=precision)
    if name == ParameterServer.name:
        return ParameterServer(model, optimizer, comm, clip=clip, precision=precision)
    if name == DDP.name:
        return DDP(model, optimizer, comm, bucket_size=z["reduce_bucket_size"],
                   overlap_comm=z["overlap_comm"], clip=clip, precision=precision)
    kwargs = dict(reduce_bucket_size=z["reduce_bucket_size"], allgather_bucket_size=z["allgather_bucket_size"],
                  overlap_comm=z["overlap_comm"], offload=z["offload_optimizer"]["device"] == "cpu", clip=clip,
                  precision=precision)
    if name == ZeRO3.name:
        return ZeRO3(model, optimizer, comm, prefetch_bucket_size=z["stage3_prefetch_bucket_size"],
                     max_live_parameters=z["stage3_max_live_parameters"], **kwargs)
    return STRATEGIES[name](model, optimizer, comm, **kwargs)


__all__ = ["DDP", "STRATEGIES", "Bucket", "HostOptimizer", "LocalStrategy", "ParameterServer", "ZeRO1",
           "ZeRO2", "ZeRO3", "build_strategy", "element_bytes", "make_buckets", "padded_elements",
           "shard_elements", "strategy_name", "zero3_units"]
