"""Mixture of experts: the experts' memory per rank and the all-to-all bytes of expert parallelism.

For L layers of which every ``every_n_layers``-th is MoE (n = ⌈L / every_n_layers⌉), E experts
of hidden size h, each a GPT MLP (c_fc h × 4h, c_proj 4h × h, biases), split over ep ranks::

    expert parameters per rank    Ψ_e = n · (E/ep) · (8h² + 5h)          (tensor parallel t: 8h²/t + 4h/t + h)
    their model states            (w + w + K/z) · Ψ_e                     z = dp/ep with ZeRO-1/2, else 1
                                  (w + w + K) · Ψ_e / z                   ZeRO-3, z = dp/ep
    router (not an expert)        n · h · E, on every rank
    capacity per expert           C = ⌈capacity_factor · T · k / E⌉       T: the tokens of one group
    one all-to-all sends          (ep − 1)/ep · E · C · h · itemsize      (the block a rank keeps stays)
    per step                      4 · n · groups per micro-batch · micro-batches all-to-alls
    recomputed forward per token  4h² + h·E + 8h²·E·C/T weights in a MoE block (12h² dense)

(Lepikhin et al. 2020 "GShard" §2; Rajbhandari et al. 2022 "DeepSpeed-MoE" §4 for the
expert-data-parallel groups.) :func:`moe_for_config` reads a training config; the train report
prints these beside what the run measured.
"""
from __future__ import annotations

import math

from ..defaults import MOE_DEFAULTS
from ..moe.router import capacity
from .activations import checkpointed_layers
from .memory import model_state_memory, optimizer_key


def moe_layer_count(layers: int, every_n_layers: int = 1) -> int:
    """Blocks i in 0 … L−1 with i % every_n_layers == 0."""
    return math.ceil(layers / every_n_layers)


def expert_parameters(hidden: int, bias: bool = True, tp: int = 1) -> int:
    """One expert's elements on one tensor-parallel rank: c_fc (h × 4h/t, bias 4h/t), c_proj (4h/t × h, bias h)."""
    h = hidden
    return 8 * h * h // tp + ((4 * h // tp + h) if bias else 0)


def moe_estimate(layers: int, hidden: int, experts: int, top_k: int = 2, capacity_factor: float = 1.25,
                 ep: int = 1, every_n_layers: int = 1, tokens_per_group: int | None = None,
                 groups_per_micro_batch: int = 1, micro_batches: int = 1, dp: int = 1, stage: int = 0,
                 precision: str = "fp16", optimizer: str = "adam", tp: int = 1, bias: bool = True,
                 itemsize: int | None = None) -> dict:
    """The experts' parameters and optimizer states per rank, and the all-to-all bytes per step.

    ``dp``: the data-parallel degree (ep of it are the expert-parallel ranks); ``itemsize``: the
    bytes of one element on the wire (default 2 in fp16/bf16, 4 in fp32)."""
    if experts % ep:
        raise ValueError(f"--experts {experts} is not divisible by --ep {ep}: each ep rank holds E/ep whole experts")
    if dp % ep:
        raise ValueError(f"--ep {ep} does not divide the data-parallel degree {dp}: the ep ranks are drawn from "
                         f"the data-parallel ranks")
    if top_k > experts:
        raise ValueError(f"--top-k {top_k} is larger than --experts {experts}")
    if not capacity_factor > 0:
        raise ValueError(f"--capacity-factor must be > 0, got {capacity_factor}")
    n = moe_layer_count(layers, every_n_layers)
    psi = n * (experts // ep) * expert_parameters(hidden, bias, tp)
    edp = dp // ep
    states = model_state_memory(psi, dp=edp, stage=stage, precision=precision,
                                optimizer=optimizer)
    w = itemsize if itemsize is not None else (4 if precision == "fp32" else 2)
    out = {"stage": stage, "moe_layers": n, "experts": experts, "ep": ep, "expert_data_parallel": edp,
           "expert_parameters_per_rank": psi, "router_parameters": n * hidden * experts,
           "model_states": {k: states[k] for k in ("parameters", "gradients", "optimizer_states", "total")},
           "capacity": None, "all_to_all_bytes": None, "all_to_all_per_step": None,
           "all_to_all_bytes_per_step": None}
    if tokens_per_group:
        C = capacity(tokens_per_group, top_k, experts, capacity_factor)
        each = (ep - 1) * (experts // ep) * C * hidden * w
        calls = 4 * n * groups_per_micro_batch * micro_batches if ep > 1 else 0
        out.update(capacity=C, all_to_all_bytes=each, all_to_all_per_step=calls, all_to_all_bytes_per_step=each * calls)
    return out


def block_weights_per_token(layer_ids, hidden: int, moe: dict | None, tokens_per_group: int) -> float:
    """The matmul weights one token multiplies in the forward of blocks ``layer_ids`` (what a
    recomputed forward multiplies again): 12h² for a dense block (attention 4h², MLP 8h²); for a
    MoE block 4h² + h·E (the router) + 8h²·E·C/T (its share of the E·C slots every group runs
    through the experts, dropped or empty slots included: C = ⌈capacity_factor · T · k / E⌉)."""
    h, dense = hidden, 12 * hidden * hidden
    if moe is None:
        return float(dense * len(layer_ids))
    m = {**MOE_DEFAULTS, **moe}
    E, T = m["num_experts"], tokens_per_group
    C = capacity(T, m["top_k"], E, m["capacity_factor"])
    sparse = 4 * h * h + h * E + 8 * h * h * E * C / T
    return float(sum(sparse if i % m["every_n_layers"] == 0 else dense for i in layer_ids))


def recomputed_weights(layers: int, pp: int, hidden: int, checkpointing: str, method: str, num_layers: int,
                       moe: dict | None, tokens_per_group: int) -> tuple[float, float]:
    """``(recomputed_fraction, block_params)`` for :func:`.flops.training_flops`: the share of a
    stage's layers full recomputation re-runs (Megatron's ``block`` method: its first
    ``num_layers``), and the weights per token their forward multiplies again, scaled to all
    layers — 12h² per dense block, a MoE block's slots (:func:`block_weights_per_token`)."""
    per = layers // pp
    whole = checkpointed_layers(per, checkpointing, method, num_layers)[1]
    fraction = (per - whole) / per if checkpointing == "full" else 1.0
    block = 12 * hidden * hidden * layers
    if moe is not None and checkpointing == "full" and fraction > 0:   # the recomputed blocks' experts' slots
        ids = [s * per + j for s in range(pp) for j in range(per - whole)]
        block = block_weights_per_token(ids, hidden, moe, tokens_per_group) / fraction
    return fraction, block


def moe_for_config(cfg: dict, world_size: int, seq_len: int) -> dict | None:
    """:func:`moe_estimate` for a (validated) training config, or None without ``model.moe``."""
    m = cfg["model"].get("moe")
    if m is None:
        return None
    m = {**MOE_DEFAULTS, **m}
    par = cfg["parallel"]
    dp = world_size // (par["tensor"] * par["pipeline"] * par["context"]["size"])
    tokens = cfg["train_micro_batch_size_per_gpu"] * seq_len
    group = m["group_size"] or tokens
    mixed = cfg["fp16"]["enabled"] or cfg["bf16"]["enabled"]
    itemsize = 2 if mixed else (8 if cfg["dtype"] == "float64" else 4)
    est = moe_estimate(cfg["model"]["n_layer"], cfg["model"]["n_embd"], m["num_experts"], m["top_k"],
                       m["capacity_factor"], par["expert"], m["every_n_layers"], group, tokens // group,
                       cfg["gradient_accumulation_steps"], dp, cfg["zero_optimization"]["stage"],
                       "fp16" if mixed else "fp32", optimizer_key(cfg["optimizer"]),
                       par["tensor"], cfg["model"]["bias"], itemsize)
    if not mixed and cfg["dtype"] == "float64":        # the formulas count fp32 as 4 bytes: float64 is twice that
        est["model_states"] = {k: 2 * v for k, v in est["model_states"].items()}
    return est
