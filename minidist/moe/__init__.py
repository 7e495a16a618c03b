"""Mixture of experts: a router and E experts in place of a block's dense MLP.

Public API (what the demo chapter, the exercises and the notebooks use):

* **Build.** Give the model a ``moe`` section — in a training config
  ``{"model": {"moe": {"num_experts": 4, "top_k": 2, "capacity_factor": 1.25,
  "aux_loss_coef": 0.01, "z_loss_coef": 0.001, "every_n_layers": 1}}}`` (defaults:
  :data:`minidist.defaults.MOE_DEFAULTS`), or in Python
  ``GPT(GPTConfig(..., moe=MoEConfig(num_experts=4, top_k=2)))``. Block i is MoE iff
  ``i % every_n_layers == 0``; its ``block.mlp`` is a :class:`MoEMLP`, whose parameters are
  ``transformer.h.{i}.mlp.router.weight`` (n_embd × E, W_gate) and
  ``transformer.h.{i}.mlp.experts.{e}.c_fc.weight`` … (each expert a GPT MLP; ``p.expert``
  is True on expert parameters). Expert parallelism: ``"parallel": {"expert": N}`` (ep
  ranks drawn from the data-parallel ranks, :mod:`minidist.parallel.expert`).
* **Losses.** ``model(idx, targets)`` returns the language-model loss plus, for every MoE
  layer, ``aux_loss_coef · aux + z_loss_coef · z`` (mean over the layer's groups);
  ``layer.loss`` is that Tensor after a forward; :func:`moe_layers` lists the layers.
* **Statistics after a forward (or a training step).** ``layer.stats``: one dict per group of
  the last forward — ``load`` (E,) assignments per expert before capacity, ``dropped``
  (assignments beyond capacity), ``capacity`` C, ``tokens`` T, ``aux_loss``, ``z_loss`` (the
  uncoefficiented floats). :func:`statistics` sums them over a model's layers and groups;
  the :class:`~minidist.training.trainer.Trainer` records, per step, ``history[s]["moe"]``
  = ``{layer id: {"load": [...], "dropped": n}}`` summed over the step's micro-batches.
* **Generation routes without drops.** :func:`dropless` (``layer.drop_tokens = False``, the
  name of DeepSpeed-MoE's switch; Megatron-LM's dropless MoE) gives every expert a slot for
  every token of a group (C = T). :func:`minidist.inference.generate` decodes under it: a
  decode step's group is the B new tokens, the uncached forward's the B·T of the whole
  window, and with a capacity the two would drop different tokens, so the cache would change
  the generated text. Training keeps its capacity.
* **Routing as data.** :func:`route` (probabilities → experts, slots, drops) and
  :func:`capacity` run without any model (for figures and exercises).
* **All-to-all bytes.** Per MoE layer and group an ep rank makes four all-to-alls (two in
  forward, two in backward), each sending (ep − 1)/ep · E · C · h elements:
  :func:`minidist.parallel.expert.all_to_all_bytes` (bytes, with the itemsize); they are
  logged under the collective name "all_to_all" on ``grid.ep`` like any other message
  (``trainer.step_log.collectives``: ``op``, ``group``, ``bytes_sent``).
* **The report** (``python -m minidist.train --report``): ``report["moe"]["estimate"]``
  (:func:`minidist.estimate.moe.moe_for_config`: experts' parameters and optimizer states per
  rank, capacity, all-to-all bytes per step), ``report["moe"]["load"]`` (per step, per layer:
  load per expert and dropped assignments summed over the data-parallel ranks), and per rank
  ``ranks[i]["moe"]`` what it measured (:mod:`minidist.parallel.expert.accounting`). The
  estimator's command line: ``python -m minidist.estimate … --experts E --ep N --top-k k
  --capacity-factor f``.
* **What composes.** ``python -m minidist.train --support-matrix`` (rows MoE and EP): MoE with
  data parallelism, ZeRO-1/2/3, TP and SP (under SP the layer gathers the sequence, routes it
  whole and keeps its positions again), PP, fp16/bf16, selective and full recomputation (a
  recomputed block's aux and z losses get their gradients from the recompute:
  :mod:`minidist.recompute`'s side losses) and checkpoints; EP with DDP, ZeRO-1/2/3, TP, SP,
  PP, clipping, fp16/bf16 and checkpoints (under ZeRO-3 the experts are partitioned over the
  expert-data-parallel ranks, the rest over all data-parallel ranks). Refused before any rank
  starts: MoE with CP, distillation, PEFT.
"""
from __future__ import annotations

import contextlib

import numpy as np

from .layer import Expert, MoEConfig, MoEMLP
from .router import Routing, capacity, route, top_k

__all__ = ["Expert", "MoEConfig", "MoEMLP", "Routing", "accumulate", "capacity", "dropless", "moe_layers", "route",
           "statistics", "top_k"]


@contextlib.contextmanager
def dropless(model):
    """Within the block every MoE layer of ``model`` drops no token (``drop_tokens = False``:
    each expert has a slot for every token of its group); the layers' settings come back after."""
    layers = [m for m in model.modules() if isinstance(m, MoEMLP)]
    saved = [m.drop_tokens for m in layers]
    for m in layers:
        m.drop_tokens = False
    try:
        yield model
    finally:
        for m, before in zip(layers, saved):
            m.drop_tokens = before


def moe_layers(model) -> dict:
    """layer id → :class:`MoEMLP` of every MoE block ``model`` holds."""
    blocks = getattr(getattr(model, "transformer", None), "h", None)
    if blocks is None:
        return {}
    return {int(name): b.mlp for name, b in blocks._modules.items() if isinstance(b.mlp, MoEMLP)}


def statistics(model) -> dict:
    """layer id → ``{"load": (E,) array, "dropped": int}`` of the last forward, summed over groups."""
    out = {}
    for i, layer in moe_layers(model).items():
        if layer.stats:
            out[i] = {"load": np.sum([s["load"] for s in layer.stats], axis=0),
                      "dropped": int(sum(s["dropped"] for s in layer.stats))}
    return out


def accumulate(into: dict, model) -> dict:
    """Add the last forward's :func:`statistics` to ``into`` (layer id → ``{"load": list, "dropped": int}``:
    what a training step records over its micro-batches)."""
    for i, s in statistics(model).items():
        acc = into.setdefault(i, {"load": [0] * len(s["load"]), "dropped": 0})
        acc["load"] = [int(a + b) for a, b in zip(acc["load"], s["load"])]
        acc["dropped"] += s["dropped"]
    return into
