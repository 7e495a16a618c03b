"""Expert parallelism: the experts of a mixture of experts split over ``grid.ep``.

``parallel.expert: N`` — the ep ranks are drawn from the data-parallel ranks (Megatron-LM,
DeepSpeed-MoE): they read different micro-batches; each holds E/ep whole experts and
exchanges its group's slots with two all-to-alls per MoE layer (:mod:`.dispatch`); the
gradients of non-expert parameters are averaged over every data-parallel rank, those of
expert parameters over the expert-data-parallel ranks only (:mod:`.strategy`).

=====================  ==========================================================================
file                   what a student finds there
=====================  ==========================================================================
:mod:`.dispatch`       the dispatch and combine all-to-alls as autograd ops; their byte count
:mod:`.strategy`       DDP / ZeRO-1 / ZeRO-2 run over two groups: experts and everything else
=====================  ==========================================================================

The MoE layer itself (router, slots, capacity, losses) is :mod:`minidist.moe`; it asks its layer
factory for ``expert_parallel`` (:func:`layers_for` sets it).
"""
from __future__ import annotations

from .dispatch import ExpertParallel, all_to_all_bytes, experts_to_slots, slots_to_experts
from .strategy import ExpertDataParallel, ParameterView, build_expert_strategy, is_expert


def layers_for(cfg: dict, grid, layers):
    """``layers`` (any factory) with the dispatcher over ``grid.ep`` when ``parallel.expert`` > 1."""
    if cfg["parallel"]["expert"] > 1:
        layers.expert_parallel = ExpertParallel(grid.ep)
    return layers


__all__ = ["ExpertDataParallel", "ExpertParallel", "ParameterView", "all_to_all_bytes", "build_expert_strategy",
           "experts_to_slots", "is_expert", "layers_for", "slots_to_experts"]
