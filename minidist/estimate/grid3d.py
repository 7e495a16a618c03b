"""Per pipeline rank of a DP × TP × PP ("3D", PTD-P) layout: model-state bytes and bytes sent
per training step, to the byte, as minidist's trainer holds and sends them.

The other modules of :mod:`minidist.estimate` answer for an average device (Ψ/(t·p) parameters
each); here every pipeline rank is itemised, because the ranks of a pipeline are not alike.
Notation: L layers, h hidden, V vocabulary, T block size, b micro-batch, s sequence, m
micro-batches per step, d = dp, t = tp, p = pp, n chunks (p·v), w bytes per parameter,
gradient and activation element (2 under fp16/bf16), K optimizer-state bytes per element.

**What a pipeline rank holds** (Narayanan et al. 2021, PTD-P §2): chunk c runs blocks
``c·L/n … (c+1)·L/n − 1``; chunk 0 also holds ``wte`` and ``wpe``, the last chunk ``ln_f`` and
a copy of ``wte`` as the tied LM head — held once when one rank has both ends (the V
schedules). Tensor parallelism (Shoeybi et al. 2019 §3) splits ``c_attn`` and ``c_fc`` by
columns, both ``c_proj`` weights by rows and ``wte`` by vocabulary rows (padded to a multiple
of ``make_vocab_size_divisible_by · t``); LayerNorms, ``wpe`` and row-parallel biases are
replicated: a block holds 12h²/t + 7h/t + 6h parameters (12h²/t + 2h without biases).

**Model states** (Rajbhandari et al. 2020, ZeRO §5) of the rank's Ψ_r parameters, with
S = Σ_buckets ⌈n_b/d⌉ its shard (:mod:`minidist.parallel.data.buckets`' padding):
``w·Ψ_r + w·Ψ_r + K·Ψ_r`` (DDP), ``+ K·S`` (ZeRO-1), ``w·Ψ_r + (w + K)·S`` (ZeRO-2),
``(w + w + K)·S`` (ZeRO-3, whose buckets are its units — the root: the rank's ``wte`` rows,
``wpe``, ``ln_f``; then each block, its tp slices under tensor parallelism — so S = Σ_units
⌈n_u/d⌉ whatever the bucket size).

**Bytes sent per step**, the sum of

* tensor parallel: every collective of :func:`~minidist.parallel.tensor.accounting.step_collectives`
  (Shoeybi §3; Korthikanti et al. 2022 §4.2.2 under sequence parallelism) for the rank's
  blocks, plus the embedding's on chunk 0's rank and the LM head's and loss's on the last
  chunk's, per micro-batch;
* pipeline: per micro-batch and chunk boundary that crosses ranks, the activation forward and
  its gradient backward, b·s·h elements (b·(s/t)·h under sequence parallelism), at w bytes;
* tied embedding: a ring all-reduce over the 2 end ranks of the wte shard's gradient,
  2·⌈V_p·h/(2t)⌉ elements (Megatron's embedding group), none when one rank holds both;
* data parallel (ZeRO §7): all-reduce (DDP) or reduce-scatter + all-gather (ZeRO-1/2) of the
  shard, 2(d−1)·S·w; ZeRO-2 without a pipeline reduce-scatters every micro-batch,
  (m+1)(d−1)·S·w (the pipeline reduces once, after its flush); ZeRO-3 all-gathers the units
  of every chunk for each micro-batch's forward and again for its backward — G elements per
  pass, the root once per chunk that runs the embedding or the head — and reduce-scatters
  once after the flush: (d−1)·(2m·G + S)·w; without a pipeline G = S and every micro-batch
  reduce-scatters, 3m(d−1)·S·w;
* one-float64 all-reduces, 16(n−1) bytes over n ranks: the fp16/bf16 overflow flag (over the
  world under tensor or pipeline parallelism, over dp for ZeRO) and, when clipping, the norm
  over the model-parallel group (and over dp for ZeRO).

**Mixture of experts** (``moe``, ``ep``): a MoE block holds the router and its E/ep experts
in place of the dense MLP; with ep > 1 a rank holding experts runs two strategies (experts
over d/ep ranks, the rest over d), sends the all-to-alls, and its MoE blocks' tensor-parallel
collectives act on slot buffers — :mod:`.moe_grid` itemises all of it.

Assumed: no fp16 overflow (a skipped ZeRO step sends no all-gather); under the pipeline
ZeRO-2/3 reduce after the flush (the config refuses ``overlap_comm`` there); no full
recomputation under ZeRO-3 without a pipeline (a recomputed block gathers its parameters once
more; on a pipeline stage it keeps them for the backward that follows); offload and
the parameter server are not modelled here (:func:`estimate_for_config` notes them).
tests/test_estimate_3d.py checks every rank against measured TP × DP, PP × DP, ZeRO and 3D runs;
tests/test_moe_estimate.py the same with experts (EP × DP, MoE × PP, EP × PP, EP × TP).
"""
from __future__ import annotations

import numpy as np

from ..defaults import DDP, DEFAULT_SCHEDULE, INTERLEAVED_1F1B, REDUCE_BUCKET_SIZE, normalize_schedule
from ..parallel.pipeline import build_schedule
from ..parallel.tensor.accounting import collective_bytes, step_collectives
from ..parallel.tensor import padded_vocab_size
from ..training.config import sequence_length
from .context import context_bytes_per_step
from .memory import OPTIMIZER_BYTES, bytes_per_param, optimizer_key
from .moe_grid import all_to_all_of_rank, is_expert_name, moe_block_ids, moe_mlp_parameters, tp_bytes_change
from .pipeline import check_pipeline, pipeline_bubble

FIRST_CHUNK_COLLECTIVES = ("wte g", "scatter to sequence (backward)")   # the rest beyond blocks: last chunk


def block_parameters(h: int, tp: int = 1, bias: bool = True, moe_mlp: list | None = None) -> list:
    """(name, elements) of one block on one tp rank, in registration order (Shoeybi §3);
    ``moe_mlp``: a MoE block's router and experts in place of the dense MLP (:mod:`.moe_grid`)."""
    items = [("ln_1.weight", h), ("ln_1.bias", h),
             ("attn.c_attn.weight", h * 3 * h // tp), ("attn.c_attn.bias", 3 * h // tp),   # columns, by heads
             ("attn.c_proj.weight", h * h // tp), ("attn.c_proj.bias", h),                # rows; bias replicated
             ("ln_2.weight", h), ("ln_2.bias", h),
             ("mlp.c_fc.weight", h * 4 * h // tp), ("mlp.c_fc.bias", 4 * h // tp),        # columns
             ("mlp.c_proj.weight", 4 * h * h // tp), ("mlp.c_proj.bias", h)]             # rows
    items = [(n, k) for n, k in items if bias or not n.endswith("bias")]
    return items if moe_mlp is None else [(n, k) for n, k in items if not n.startswith("mlp.")] + moe_mlp


def rank_parameters(n_layer: int, n_embd: int, vocab: int, block_size: int, chunks: list, n_chunks: int,
                    tp: int = 1, bias: bool = True, make_vocab_size_divisible_by: int = 1, moe: dict | None = None,
                    ep: int = 1) -> list:
    """(name, elements) of every parameter a pipeline rank holding ``chunks`` (of ``n_chunks``)
    keeps, in the model's order. The vocabulary is padded only under tensor parallelism (the
    one-rank GPT is built otherwise). ``moe``: the model's ``model.moe`` (its MoE blocks hold a
    router and E/ep experts, :mod:`.moe_grid`)."""
    h, per, last = n_embd, n_layer // n_chunks, n_chunks - 1
    rows = padded_vocab_size(vocab, tp, make_vocab_size_divisible_by) // tp if tp > 1 else vocab
    out = [("transformer.wte.weight", rows * h)] if 0 in chunks or last in chunks else []   # once
    out += [("transformer.wpe.weight", block_size * h)] if 0 in chunks else []
    mixture = moe_mlp_parameters(h, moe, ep, tp, bias) if moe is not None else None
    for c in sorted(chunks):
        ids = range(c * per, (c + 1) * per)
        sparse = set(moe_block_ids(ids, moe))
        out += [(f"transformer.h.{i}.{n}", k) for i in ids
                for n, k in block_parameters(h, tp, bias, mixture if i in sparse else None)]
    if last in chunks:
        out += [("transformer.ln_f.weight", h)] + ([("transformer.ln_f.bias", h)] if bias else [])
    return out


def zero3_units(params: list, chunks: list, n_chunks: int, n_layer: int) -> tuple[list, list]:
    """ZeRO-3's units on a pipeline rank (:func:`minidist.parallel.data.zero3.zero3_units`): the
    elements of every unit (the root — every parameter outside the blocks — if any, then each
    block) and, per chunk, of each unit it runs (the root if it holds the embedding or the
    head, then its blocks)."""
    root = sum(k for name, k in params if not name.startswith("transformer.h."))
    block = {}
    for name, k in params:
        if name.startswith("transformer.h."):
            i = int(name.split(".")[2])
            block[i] = block.get(i, 0) + k
    per = n_layer // n_chunks
    runs = [([root] if c in (0, n_chunks - 1) and root else []) +
            [block[i] for i in range(c * per, (c + 1) * per) if i in block]     # (the experts': MoE blocks only)
            for c in sorted(chunks)]
    return ([root] if root else []) + [block[i] for i in sorted(block)], runs


def bucket_sizes(numels: list, bucket_size: int = REDUCE_BUCKET_SIZE) -> list:
    """Elements of each flat bucket: parameters taken in reverse order, a new bucket when the
    next one would overflow ``bucket_size`` (:func:`minidist.parallel.data.buckets.make_buckets`)."""
    out, size = [], 0
    for n in reversed(numels):
        if size and size + n > bucket_size:
            out.append(size)
            size = 0
        size += n
    return out + ([size] if size else [])


def shard_elements(numels: list, dp: int, bucket_size: int = REDUCE_BUCKET_SIZE) -> int:
    """S = Σ_b ⌈n_b/d⌉: the elements a data-parallel rank owns, padding included."""
    return sum(-(-n // dp) for n in bucket_sizes(numels, bucket_size))


def widths(precision: str = "fp32", dtype_bytes: int = 4, moments: int = 2) -> dict:
    """Bytes per element: ``w`` (parameters, gradients, activations on the wire), ``K`` (ZeRO's
    optimizer state: ``moments`` arrays — Adam's m and v: 2, SGD's momentum: 1, plain SGD: 0 — in
    fp32 under fp16/bf16 plus the fp32 master, else in the parameters' dtype), ``w32`` (the loss
    statistics and the tied embedding's gradient, in the parameters' dtype: 8 for float64)."""
    b = bytes_per_param(precision)
    mixed = b["master"] > 0
    state = 4 if mixed else dtype_bytes
    return {"w": b["parameters"] if mixed else dtype_bytes, "K": b["master"] + moments * state,
            "w32": dtype_bytes, "mixed": mixed}


def tp_bytes_of_rank(blocks: int, first: bool, last: bool, b: int, s: int, h: int, tp: int, sp: bool,
                     bias: bool, w: int, w32: int) -> int:
    """Bytes one tp rank sends in one micro-batch: its blocks' collectives and, on the first and
    last chunk's rank, the embedding's and the LM head's and loss's (accounting.step_collectives)."""
    total = 0
    for where, op, n in step_collectives(blocks, b, s, h, tp, sp, bias):
        part = "block" if where.startswith("h.") else "first" if where in FIRST_CHUNK_COLLECTIVES else "last"
        if part == "block" or (part == "first" and first) or (part == "last" and last):
            total += collective_bytes(op, n, tp, w32 if where.startswith("loss") else w)
    return total


def pp_bytes_of_rank(stage_to_rank: list, rank: int, micro_batches: int, elements: int, w: int) -> int:
    """Bytes a pipeline rank sends in one step: per micro-batch, the activation over every chunk
    boundary it sends across to another rank, and the gradient over every one it receives from."""
    crossings = sum((a == rank) + (c == rank) for a, c in zip(stage_to_rank, stage_to_rank[1:]) if a != c)
    return crossings * micro_batches * elements * w


def scalar_bytes(n: int) -> int:
    """A ring all-reduce of one float64 over n ranks (padded to n elements): 2(n−1)·8 bytes."""
    return 2 * (n - 1) * 8 if n > 1 else 0


STATES = ("parameters", "gradients", "optimizer_states")


def _data_parallel(params, numels: list, chunks: list, n: int, n_layer: int, d: int, zero_stage: int, wid: dict,
                   m: int, pp: int, bucket_size: int) -> tuple[dict, int, int]:
    """(model states, bytes sent per step, shard S) of one data-parallel strategy over ``d``
    ranks holding ``numels`` (``params``: their names too, for ZeRO-3's units)."""
    w = wid["w"]
    if zero_stage == 3:                    # one bucket per unit; G: what one pass of every chunk gathers
        units, runs = zero3_units(params, chunks, n, n_layer) if params is not None else (numels, [numels])
        shard = sum(-(-k // d) for k in units)
        gathered = sum(-(-k // d) for run in runs for k in run)
    else:
        shard = shard_elements(numels, d, bucket_size)
    psi = sum(numels)
    states = {"parameters": w * (shard if zero_stage == 3 else psi),
              "gradients": w * (shard if zero_stage >= 2 else psi),
              "optimizer_states": wid["K"] * (shard if zero_stage else psi)}
    sent = 0
    if d > 1 and zero_stage == 3:          # gathers per pass; the reduce-scatter per micro-batch without a pipeline
        sent = (d - 1) * (2 * m * gathered + (m if pp == 1 else 1) * shard) * w
    elif d > 1:                            # ZeRO-2 outside a pipeline reduce-scatters every micro-batch
        sent = (m + 1 if zero_stage == 2 and pp == 1 else 2) * (d - 1) * shard * w
    return states, sent, shard


def _expert_scalars(mixed: bool, clip: bool, world: int, mp: int, edp: int, ep: int, zero_stage: int) -> int:
    """The experts' one-float64 all-reduces (:mod:`minidist.parallel.expert.strategy`): their
    overflow flag over the world, their squared norm over grid.mp, grid.dp (sharded) and grid.ep."""
    out = scalar_bytes(world) if mixed else 0
    if clip:
        out += scalar_bytes(mp) + (scalar_bytes(edp) if zero_stage else 0) + scalar_bytes(ep)
    return out


def check_experts(moe: dict | None, ep: int, dp: int, zero_stage: int) -> None:
    """What the trainer refuses of expert parallelism, with the same reasons."""
    if ep == 1:
        return
    if moe is None:
        raise ValueError(f"ep {ep} splits the experts of a mixture of experts: give the experts (model.moe, --experts)")
    E = moe.get("num_experts", 4)
    if E % ep:
        raise ValueError(f"{E} experts are not divisible by ep {ep}: each ep rank holds E/ep whole experts")
    if dp % ep:
        raise ValueError(f"ep {ep} does not divide the data-parallel degree {dp}: the ep ranks are drawn from the "
                         f"data-parallel ranks")


def estimate_3d(n_layer: int, n_embd: int, n_head: int, vocab: int, block_size: int, seq: int,
                micro_batch: int = 1, micro_batches: int = 1, dp: int = 1, tp: int = 1, pp: int = 1,
                sp: bool = False, zero_stage: int = 0, precision: str = "fp32", schedule: str = DEFAULT_SCHEDULE,
                virtual_stages: int = 1, bias: bool = True, make_vocab_size_divisible_by: int = 1,
                moments: int = 2, dtype_bytes: int = 4, bucket_size: int = REDUCE_BUCKET_SIZE,
                clip: bool = False, moe: dict | None = None, ep: int = 1) -> dict:
    """Model states and bytes sent per step of every pipeline rank (all tp and dp ranks of one
    pipeline rank hold and send the same). Returns ``{"inputs", "ranks", "pipeline"}``, ``ranks``
    a list over pipeline ranks of ``{"pp_rank", "chunks", "blocks", "params", "shard",
    "model_states", "bytes_sent", "experts"}`` (see the module docstring for every formula).
    ``moe``: ``model.moe`` of a mixture of experts, its experts over ``ep`` of the ``dp`` ranks
    (:mod:`.moe_grid`; ``experts``: that rank's MoE blocks, expert states and all-to-alls)."""
    if n_head % tp or n_embd % tp:
        raise ValueError(f"n_head ({n_head}) and n_embd ({n_embd}) must be divisible by tp ({tp})")
    if sp and (tp == 1 or seq % tp):
        raise ValueError(f"sequence parallelism needs tp > 1 dividing the sequence length {seq} (tp = {tp})")
    if zero_stage not in (0, 1, 2, 3):
        raise ValueError(f"zero_stage must be 0, 1, 2 or 3, got {zero_stage}")
    check_experts(moe, ep, dp, zero_stage)
    wid = widths(precision, dtype_bytes, moments)
    w, m, h = wid["w"], micro_batches, n_embd
    if pp > 1:
        schedule = check_pipeline(schedule, pp, m, virtual_stages)
        stage_to_rank = build_schedule(schedule, pp, m, virtual_stages).stage_to_rank
    else:
        schedule, stage_to_rank = None, [0]
    n = len(stage_to_rank)
    if n_layer % n:
        raise ValueError(f"n_layer ({n_layer}) does not split into {n} pipeline chunks ({pp} ranks × "
                         f"{n // pp} chunks per rank); use a multiple of {n}")
    world, mp = dp * tp * pp, tp * pp
    scalars = 0
    if wid["mixed"]:                       # the overflow flag: every rank of the grid must skip alike
        scalars += scalar_bytes(world if mp > 1 else dp if zero_stage else 1)
    if clip:                               # the global norm: over grid.mp, and over dp for a sharded gradient
        scalars += scalar_bytes(mp) + (scalar_bytes(dp) if zero_stage else 0)
    ranks = []
    for r in range(pp):
        chunks = [c for c, owner in enumerate(stage_to_rank) if owner == r]
        first, last = 0 in chunks, n - 1 in chunks
        params = rank_parameters(n_layer, h, vocab, block_size, chunks, n, tp, bias, make_vocab_size_divisible_by,
                                 moe, ep)
        psi = sum(k for _, k in params)
        blocks = len(chunks) * n_layer // n
        ids = [i for c in chunks for i in range(c * n_layer // n, (c + 1) * n_layer // n)]
        n_moe = len(moe_block_ids(ids, moe))
        # under expert parallelism a rank holding experts runs two strategies (moe_grid): experts over dp/ep
        experts = [k for name, k in params if is_expert_name(name)] if ep > 1 else []
        named = [(name, k) for name, k in params if not (experts and is_expert_name(name))]   # ZeRO-3: its units
        dense = [k for _, k in named]
        states, dp_sent, shard = _data_parallel(named, dense, chunks, n, n_layer, dp, zero_stage, wid, m, pp,
                                                bucket_size)
        sent = {"tensor_parallel": m * (tp_bytes_of_rank(blocks, first, last, micro_batch, seq, h, tp, sp, bias,
                                                         w, wid["w32"])
                                        + (tp_bytes_change(n_moe, moe, ep, micro_batch, seq, h, tp, w, sp, bias) if moe else 0)),
                "pipeline": pp_bytes_of_rank(stage_to_rank, r, m, micro_batch * (seq // tp if sp else seq) * h, w),
                "tied_embedding": 0, "data_parallel": dp_sent, "scalars": scalars}
        if (first or last) and stage_to_rank[0] != stage_to_rank[-1]:
            wte = next(k for name, k in params if name == "transformer.wte.weight")
            sent["tied_embedding"] = collective_bytes("all_reduce", wte, 2, wid["w32"])
        figures = None
        if moe is not None:
            figures = {"moe_layers": n_moe, "expert_parameters_per_rank": sum(k for name, k in params if is_expert_name(name)),
                       **all_to_all_of_rank(n_moe, moe, ep, micro_batch, seq, h, m, w)}
            sent["all_to_all"] = figures["all_to_all_bytes_per_step"]      # only with experts
            own = [k for name, k in params if is_expert_name(name)]
            figures["model_states"] = _data_parallel(None, own, chunks, n, n_layer, dp, zero_stage, wid, m, pp,
                                                     bucket_size)[0] if own else {k: 0 for k in STATES}
            if experts:                    # the experts' own strategy over grid.dp (dp/ep ranks)
                own_named = [(name, k) for name, k in params if is_expert_name(name)]   # ZeRO-3: a unit per block
                e_states, e_sent, e_shard = _data_parallel(own_named, experts, chunks, n, n_layer, dp // ep, zero_stage,
                                                           wid, m, pp, bucket_size)
                states = {k: states[k] + e_states[k] for k in STATES}
                sent["data_parallel"] += e_sent
                figures["data_parallel_bytes"] = e_sent      # the experts' part of it (their group: dp/ep ranks)
                sent["scalars"] += _expert_scalars(wid["mixed"], clip, world, mp, dp // ep, ep, zero_stage)
                shard += e_shard
                figures["model_states"] = e_states
            elif ep > 1:                   # a stage without experts joins their world-wide flag and grid.mp norm
                sent["scalars"] += (scalar_bytes(world) if wid["mixed"] else 0) + (scalar_bytes(mp) if clip else 0)
            figures["model_states"]["total"] = sum(figures["model_states"].values())
        states["total"] = sum(states.values())
        sent["total"] = sum(sent.values())
        ranks.append({"pp_rank": r, "chunks": chunks, "blocks": blocks, "params": psi, "shard": shard,
                      "model_states": states, "bytes_sent": sent, "experts": figures})
    inputs = {"n_layer": n_layer, "n_embd": n_embd, "n_head": n_head, "vocab": vocab, "block_size": block_size,
              "seq": seq, "micro_batch": micro_batch, "micro_batches": m, "dp": dp, "tp": tp, "pp": pp, "sp": sp,
              "zero_stage": zero_stage, "precision": precision, "schedule": schedule,
              "virtual_stages": n // pp, "bias": bias, "make_vocab_size_divisible_by": make_vocab_size_divisible_by,
              "moments": moments, "dtype_bytes": dtype_bytes, "bucket_size": bucket_size, "clip": clip,
              "moe": moe, "ep": ep}
    bubble = pipeline_bubble(schedule, pp, m, virtual_stages) if pp > 1 else None
    return {"inputs": inputs, "ranks": ranks, "pipeline": bubble}


def estimate_for_config(cfg: dict, world_size: int, vocab_size: int) -> dict:
    """:func:`estimate_3d` for a validated training config (:func:`minidist.training.config.load_config`)
    on ``world_size`` ranks; ``vocab_size`` as the trainer's dataset gives it. ``notes`` lists
    the settings of ``cfg`` the figures do not model."""
    par, model, zero = cfg["parallel"], cfg["model"], cfg["zero_optimization"]
    tp, pp, cp = par["tensor"], par["pipeline"], par["context"]["size"]
    if world_size % (tp * pp * cp):
        raise ValueError(f"world size {world_size} is not divisible by tensor × pipeline × context = {tp * pp * cp}")
    precision = "bf16" if cfg["bf16"]["enabled"] else "fp16" if cfg["fp16"]["enabled"] else "fp32"
    schedule = normalize_schedule(par["schedule"])
    opt = cfg["optimizer"]
    moments = OPTIMIZER_BYTES[optimizer_key(opt)] // 4      # fp32 arrays per element: m, v (Adam); plain SGD none
    notes = []
    if zero["offload_optimizer"]["device"] != "none":
        notes.append("optimizer offload not modelled: device optimizer states are predicted as without it")
    if zero["stage"] == 3 and cfg["activation_checkpointing"]["granularity"] == "full" and pp == 1:
        notes.append("full recomputation under ZeRO-3 without a pipeline not modelled: each recomputed block "
                     "gathers its parameters once more")
    if tp > 1 and cfg["activation_checkpointing"]["granularity"] == "full":
        notes.append("full recomputation under tensor parallelism: bytes not modelled (the recomputed forward's tp "
                     "all-reduces run again)")
    if tp > 1 and opt["type"].lower() == "lamb":
        notes.append("LAMB under tensor parallelism: bytes not modelled (its per-tensor norms are all-reduced over tp)")
    if zero["stage"] == 0 and par["data_parallel"] != DDP:
        notes.append(f"data_parallel {par['data_parallel']!r} not modelled: predicted as DDP")
    out = estimate_3d(
        model["n_layer"], model["n_embd"], model["n_head"], model["vocab_size"] or vocab_size, model["block_size"],
        sequence_length(cfg)[0] // cp, cfg["train_micro_batch_size_per_gpu"], cfg["gradient_accumulation_steps"],
        dp=world_size // (tp * pp), tp=tp, pp=pp, sp=par["sequence_parallel"], zero_stage=zero["stage"],   # dp × cp
        precision=precision, schedule=schedule,
        virtual_stages=par["virtual_stages"] if schedule == INTERLEAVED_1F1B else 1, bias=model["bias"],
        make_vocab_size_divisible_by=par["make_vocab_size_divisible_by"], moments=moments,
        dtype_bytes=np.dtype(cfg["dtype"]).itemsize, bucket_size=zero["reduce_bucket_size"],
        clip=cfg["gradient_clipping"] > 0, moe=model.get("moe"), ep=par.get("expert", 1))
    if cp > 1:                           # each rank's s/cp tokens above; its attention's messages on top
        w = 2 if precision != "fp32" else np.dtype(cfg["dtype"]).itemsize
        ac, held = cfg["activation_checkpointing"], model["n_layer"] // pp
        attn = context_bytes_per_step(par["context"]["algorithm"], cp, held,
                                      cfg["train_micro_batch_size_per_gpu"], sequence_length(cfg)[0], model["n_embd"],
                                      cfg["gradient_accumulation_steps"], w, tp, ac["granularity"],
                                      method=ac["method"], num_layers=ac["num_layers"])["bytes_per_step"]
        for rank in out["ranks"]:
            rank["bytes_sent"]["context_parallel"] = attn
            rank["bytes_sent"]["total"] += attn
        notes.append(f"context parallel {par['context']['algorithm']} over {cp} ranks: each rank holds s/{cp} of "
                     f"every sequence, its attention's messages counted apart; data parallelism spans dp × cp")
    out["notes"] = notes
    return out
