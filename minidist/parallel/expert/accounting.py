"""What a run with experts measured, for the train report: the load per expert and the dropped
assignments of every step, the bytes of the experts' parameters and optimizer states this rank
holds, and the all-to-all bytes of its last step — printed beside :mod:`minidist.estimate.moe`
and, per pipeline stage, :mod:`minidist.estimate.moe_grid` (the report's ``moe`` section).
"""
from __future__ import annotations

import numpy as np

from ...memory import nbytes
from ...moe import moe_layers


def _is_expert_name(name: str) -> bool:
    return ".mlp.experts." in name


def expert_memory(trainer) -> dict:
    """Bytes of this rank's experts: their parameters (the arrays this rank holds, at their
    format's width; under ZeRO-3 the experts' shards, c elements of each unit), their optimizer
    states (the device's live allocations, or under ZeRO the arrays of the experts' shards and
    fp32 masters; None under ZeRO without expert parallelism, where the experts' elements share
    the buckets' shards with every other parameter — under ZeRO-3 their parameters too)."""
    params = sum(nbytes(p.data, p.dtype_tag) for p in trainer.model.parameters() if p.expert)
    live = trainer.device.memory.live()
    states = sum(n for cat, n, name in live if cat == "optimizer_states" and _is_expert_name(name))
    experts = getattr(trainer.strategy, "experts", None)
    if experts is not None and getattr(experts, "stage", 0) >= 3:    # between steps only the shards are held
        params = sum(b.chunk * b.bytes_per_element for b in experts.buckets)
    if experts is None and getattr(trainer.strategy, "stage", 0) > 0 and any(p.expert for p in trainer.model.parameters()):
        states = None                    # ZeRO without expert parallelism: the experts share the buckets' shards
        if trainer.strategy.stage >= 3:  # ZeRO-3 released them: their elements are in those shards too
            params = None
    elif experts is not None and getattr(experts, "stage", 0) > 0:   # ZeRO: "bucket i.exp_avg", the experts' buckets
        states = sum(a.nbytes for st in experts.state.values() for a in st.values() if isinstance(a, np.ndarray))
        states += sum(a.nbytes for a in (getattr(experts, "master_shards", None) or {}).values())   # fp32 masters
    return {"parameters": None if params is None else int(params),
            "optimizer_states": None if states is None else int(states)}


def rank_summary(trainer) -> dict | None:
    """The ``moe`` section of one rank's report, or None for a dense model."""
    if not moe_layers(trainer.model):
        return None
    grid = trainer.grid
    log = getattr(trainer, "step_log", None)
    group = grid.ep.group if grid is not None and grid.ep.size > 1 else None
    calls = [c for c in (log.collectives if log is not None else [])
             if c.op == "all_to_all" and group is not None and c.group == group]
    return {"ep": grid.ep.size if grid is not None else 1,
            "expert_ids": {i: layer.expert_ids for i, layer in moe_layers(trainer.model).items()},
            "memory": expert_memory(trainer),
            "all_to_all_per_step": len(calls), "all_to_all_bytes_per_step": int(sum(c.bytes_sent for c in calls)),
            "recomputed_blocks": recomputed_moe_blocks(trainer),
            "steps": [h.get("moe", {}) for h in trainer.history]}


def recomputed_moe_blocks(trainer) -> list:
    """The MoE blocks of this rank that full recomputation re-runs in backward: their forward's
    dispatch and combine all-to-alls (and, under tensor parallelism, its collectives) run again
    (:meth:`minidist.model.Recompute.units` of the rank's blocks, one chunk per pipeline rank)."""
    rc, ids = getattr(trainer.model, "recompute", None), sorted(moe_layers(trainer.model))
    if rc is None or not ids:
        return []
    held = list(getattr(trainer.model, "layer_ids", None) or ids)
    return sorted(i for unit, on in rc.units(held) if on for i in unit if i in ids)


def job_load(ranks: list) -> list:
    """Per step, per MoE layer: the load per expert and the dropped assignments summed over the
    data-parallel ranks (the tp ranks of one data-parallel rank route the same tokens: counted once)."""
    mine = [r["moe"] for r in ranks if r.get("moe") and r["coords"].get("tp", 0) == 0]
    steps = []
    for s in range(len(mine[0]["steps"]) if mine else 0):
        layers = {}
        for m in mine:
            for layer, v in m["steps"][s].items():
                acc = layers.setdefault(int(layer), {"load": [0] * len(v["load"]), "dropped": 0})
                acc["load"] = [a + b for a, b in zip(acc["load"], v["load"])]
                acc["dropped"] += v["dropped"]
        steps.append(layers)
    return steps


def format_moe(section: dict, rank0: dict) -> str:
    """The report's text: rank 0's experts measured beside the estimate, and the load per step."""
    est, m = section["estimate"], rank0["moe"]
    ms = est["model_states"]
    stage = " on rank 0's pipeline stage" if len(section.get("ranks") or []) > 1 else ""
    lines = [f"mixture of experts: {est['moe_layers']} MoE layer(s){stage} × {est['experts']} experts, ep = {est['ep']}, "
             f"expert data parallel {est['expert_data_parallel']}; capacity C = {est['capacity']}",
             f"{'rank 0':<28} {'measured':>12} {'estimate':>12}",
             f"{'expert parameters B':<28} {_or_dash(m['memory']['parameters']):>12} {ms['parameters']:>12.0f}",
             f"{'expert optimizer states B':<28} {_or_dash(m['memory']['optimizer_states']):>12} "
             f"{ms['optimizer_states']:>12.0f}",
             f"{'all-to-all calls / step':<28} {m['all_to_all_per_step']:>12} {est['all_to_all_per_step']:>12}",
             f"{'all-to-all bytes sent / step':<28} {m['all_to_all_bytes_per_step']:>12} "
             f"{est['all_to_all_bytes_per_step']:>12}"]
    stages = section.get("ranks") or []
    for p, r in enumerate(stages if len(stages) > 1 else []):      # each pipeline stage holds its own MoE blocks
        lines.append(f"pipeline rank {p}: {r['moe_layers']} MoE layer(s), experts' model states "
                     f"{r['model_states']['total']:.0f} B, {r['all_to_all_per_step']} all-to-alls / step "
                     f"({r['all_to_all_bytes_per_step']} B) by the estimate")
    for s, layers in enumerate(section["load"]):
        lines.append(f"step {s}: " + "; ".join(f"layer {layer} load {v['load']} dropped {v['dropped']}"
                                               for layer, v in sorted(layers.items())))
    return "\n".join(lines)


def _or_dash(v) -> str:
    return "-" if v is None else str(v)
