"""The train report's job-level ``data_parallel.formula`` row: :func:`minidist.estimate.model_state_memory`
and :func:`minidist.estimate.comm_volume` for the run's Ψ, data-parallel group, stage and optimizer —
under expert parallelism once per gradient group (the non-expert parameters over grid.dp_ep, the
experts over grid.dp; Rajbhandari et al. 2022, "DeepSpeed-MoE" §4) — with the one-element
all-reduces the run makes. :mod:`minidist.report` prints it beside every rank's measurement.
"""
from __future__ import annotations

import numpy as np

from .defaults import DDP, PARAMETER_SERVER, SINGLE, zero_strategy
from .estimate import comm_volume, model_state_memory
from .estimate.memory import optimizer_key

__all__ = ["formulas"]


def formulas(trainer) -> dict:
    """The ZeRO formulas for this run: 2 bytes per element and K = 12 (Adam) in mixed
    precision, the model's dtype (4 or 8 bytes) and K = 8 in fp32.

    ``bytes_sent_per_step`` adds to the textbook volume the one-element all-reduces the
    run makes in the data-parallel row (ring, float64: ``2·(n−1)·8`` bytes over n ranks): the
    gradient norm over the p ranks when ZeRO clips its shards, and the mixed-precision overflow
    flag — over the p ranks when a ZeRO stage or the parameter server checks its own part of the
    gradients, over the whole world under tensor parallelism (every rank of the grid skips alike:
    :class:`~minidist.parallel.tensor.build.TensorParallelPrecision`, whatever the strategy).
    The norm's part over ``grid.mp`` runs on the tp group here (one pipeline stage), as does
    the flag when the world is the tp group: the ``tensor_parallel`` section counts those.
    Under the parameter server the row is a worker's (no optimizer state) and ``root`` the
    root's. Under a pipeline one row fits no rank (each stage holds its own blocks and a copy
    of the tied embedding): ``model_states`` and ``bytes_sent_per_step`` are None and
    ``not_modelled`` says where the per-rank figures are (the ``layout`` section).

    Under expert parallelism (:class:`~minidist.parallel.expert.ExpertDataParallel`) the row is
    the sum of two textbook rows: the non-expert Ψ over grid.dp_ep and this rank's E/ep experts
    over grid.dp (each with its own padding-free shard Ψ/p), plus the joint one-element
    all-reduces: the clipping norm over grid.ep (and grid.dp for shards), and the experts' overflow
    flag over the world beside the other parameters' own check (over the world under tensor
    parallelism: two flags; the experts' part takes the verdict and sends none of its own)."""
    cfg = trainer.cfg
    precision = trainer.precision.dtype if trainer.precision is not None else "fp32"
    w = 2 if trainer.precision is not None else np.dtype(cfg["dtype"]).itemsize
    stage = cfg["zero_optimization"]["stage"]
    dp = cfg["parallel"]["data_parallel"] if stage == 0 else zero_strategy(stage)
    ring = lambda n: 2 * (n - 1) * 8 if n > 1 else 0          # noqa: E731  one float64 ring all-reduce
    s = trainer.strategy
    experts = getattr(s, "experts", None) if hasattr(s, "dense") else None
    if experts is None:                 # Ψ: this rank's (tensor-parallel) shard; p: the ranks gradients span
        p = trainer.dp_comm.size if trainer.dp_comm is not None else 1
        # fine-tuning (minidist.peft): Ψ is what trains; the frozen weights are parameters only
        psi = s.numel if cfg["peft"] is not None else trainer.n_params
        rows = [_textbook(trainer, s, psi, p)]
        scalars = (stage > 0 and cfg["gradient_clipping"] > 0) * ring(p)
        if trainer.precision is not None:
            tp = trainer.grid.tp_size if trainer.grid is not None else 1
            # under tensor parallelism the flag is agreed over the world (the tensor_parallel section counts it
            # when the world is the tp group); otherwise over the group where ZeRO's or the server's ranks differ
            scalars += ring(trainer.world_size) * (trainer.world_size > tp) if tp > 1 else ring(p) * (dp != DDP)
    else:                               # the non-expert parameters over grid.dp_ep, the experts over grid.dp
        parts = (s.dense, experts)
        # a group of one rank: a plain local strategy (no shards, no offload: minidist.parallel.build_strategy)
        rows = [_textbook(trainer, part, part.numel, part.world_size, local=part.name == SINGLE) for part in parts]
        clip = cfg["gradient_clipping"] > 0
        scalars = (stage > 0 and clip) * sum(ring(part.world_size) for part in parts) \
            + clip * ring(s.ep_group.size if s.ep_group is not None else 1)
        if trainer.precision is not None:
            # the experts' flag over the world, then the other parameters' own check (as without experts:
            # over the world under tensor parallelism, over their group for ZeRO and the server); the
            # experts' part takes that verdict and sends no flag of its own
            tp = trainer.grid.tp_size
            scalars += ring(s.world.size if s.world is not None else 1) \
                + (ring(trainer.world_size) * (trainer.world_size > tp) if tp > 1 else ring(s.dense.world_size) * (dp != DDP))
    keys = ("parameters", "gradients", "optimizer_states", "total", "host")
    total = lambda rows, k: sum(r[k] for r in rows)             # noqa: E731
    out = {"bytes_per_element": w, "precision": precision, "K": rows[0]["K"],
           "model_states": {k: total([r["worker"] for r in rows], k) for k in keys},
           "scalar_all_reduce_bytes": scalars,
           "bytes_sent_per_step": total(rows, "bytes") + scalars,
           "ps_root_bytes_sent_per_step": total(rows, "root_bytes") + scalars if dp == PARAMETER_SERVER else 0}
    if dp == PARAMETER_SERVER and rows[0]["p"] > 1:     # the root holds the optimizer, the workers none
        out["root"] = {"model_states": {k: total([r["root"] for r in rows], k) for k in keys},
                       "bytes_sent_per_step": out["ps_root_bytes_sent_per_step"]}
        if len(rows) > 1 and rows[1]["p"] > 1:
            out["not_modelled"] = ("the experts' parameter server has a root per ep rank: the ranks that root the "
                                   "experts but not the other parameters fit neither row")
    if cfg["parallel"]["pipeline"] > 1:
        out["not_modelled"] = ("under a pipeline each stage holds its own blocks (and the first and last a copy of "
                               "the tied embedding): per rank in the layout section")
    if out.get("not_modelled"):
        out.pop("root", None)
        out["model_states"] = out["bytes_sent_per_step"] = None
    return out


def _textbook(trainer, strategy, psi: int, p: int, local: bool = False) -> dict:
    """One strategy's textbook row (:func:`minidist.estimate.model_state_memory`,
    :func:`minidist.estimate.comm_volume`) for Ψ = ``psi`` elements over ``p`` ranks, in bytes
    of the run's dtype: a worker's and (parameter server) the root's model states and bytes;
    ``local``: the strategy of a group of one rank (stage 0 whatever the config says)."""
    cfg = trainer.cfg
    precision = trainer.precision.dtype if trainer.precision is not None else "fp32"
    w = 2 if trainer.precision is not None else np.dtype(cfg["dtype"]).itemsize
    scale = np.dtype(cfg["dtype"]).itemsize / 4    # the estimate counts fp32 as 4 bytes (float64: 8)
    stage = 0 if local else cfg["zero_optimization"]["stage"]
    opt = optimizer_key(cfg["optimizer"])          # SGD without momentum keeps no state
    offload = cfg["zero_optimization"]["offload_optimizer"]["device"] == "cpu" and not local
    mem = model_state_memory(psi, dp=p, stage=stage, precision=precision, optimizer=opt, offload=offload)
    dp = DDP if local else cfg["parallel"]["data_parallel"] if stage == 0 else zero_strategy(stage)
    vol = comm_volume(psi, dp=p, stage=stage, precision=precision, strategy=dp,
                      micro_batches=trainer.accumulation)
    if cfg["peft"] is not None:         # the frozen weights: parameters only, and ZeRO-3 gathers them
        frozen = trainer.n_params - psi if stage == 3 else 0
        mem["parameters"] += (frozen / p * w if stage == 3 else strategy.frozen_bytes) / scale
        mem["total"] = mem["parameters"] + mem["gradients"] + mem["optimizer_states"]
        vol["dp_bytes"] += 2 * trainer.accumulation * (p - 1) / p * frozen * w / scale
    if stage == 3 and trainer.pipeline is None:     # full recomputation gathers the blocks it re-runs once more
        vol["dp_bytes"] += trainer.accumulation * (p - 1) * getattr(strategy, "recomputed", int)() * w / scale
    root = {k: mem[k] * scale for k in ("parameters", "gradients", "optimizer_states", "total", "host")}
    worker = dict(root)
    if dp == PARAMETER_SERVER and p > 1:            # a worker holds no optimizer state
        worker["total"] -= worker["optimizer_states"]
        worker["optimizer_states"] = 0.0
    return {"K": mem["bytes_per_param"]["K"], "p": p, "root": root, "worker": worker,
            "bytes": vol["dp_bytes"] * scale, "root_bytes": vol.get("ps_root_bytes", 0) * scale}
