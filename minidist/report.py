"""The training report: config, per-step losses, per-rank memory and traffic,
and — next to what each rank measured — what the ZeRO formulas say for the same config.

Per rank, ``data_parallel`` holds

* ``model_states``: bytes of parameters / gradients / optimizer states held at the optimizer
  step (see :mod:`minidist.parallel.data.base`), ``host`` for offload;
* ``model_states_expected``: the same from the strategy's exact padded layout;
* ``bytes_sent_per_step`` (measured from the message log in the last step) and its
  expectation.

The job-level ``data_parallel.formula`` is :func:`minidist.estimate.model_state_memory` and
:func:`minidist.estimate.comm_volume` for the same Ψ, world size, stage and optimizer — under
expert parallelism once per gradient group (:mod:`minidist.report_formulas`).

Under tensor, pipeline or expert parallelism the job-level ``layout`` section puts, for every
rank, the measured model states and bytes sent in the last step beside the 3D estimate of the
same config (:func:`minidist.estimate.grid3d.estimate_for_config`: its pipeline rank's figures),
and the pipeline's measured bubble beside the schedule's theory; with experts, the ``moe``
section's estimate is per pipeline rank too (:mod:`minidist.report_layout`).
"""
from __future__ import annotations

import dataclasses
import json

import numpy as np

from .distributed.objects import jsonable
from .estimate import estimate
from .estimate.context import context_bytes_per_step
from .estimate.grid3d import estimate_for_config
from .estimate.moe_grid import tp_bytes_change
from .memory import DTYPE_BYTES
from .recompute import rerun_blocks
from .parallel.expert import accounting as expert_accounting
from .parallel.pipeline.engine import pipeline_report
from .parallel.tensor.accounting import rank_summary as _tp_rank_summary
from .report_formulas import formulas
from .report_layout import format_layout, layout_report, moe_section_estimate, pipeline_theory

__all__ = ["build_report", "format_data_parallel", "formulas", "format_layout", "layout_report", "rank_report", "write_report"]


def rank_report(trainer) -> dict:
    """What one rank measured: memory by category and bytes moved."""
    dev = trainer.device
    comm = trainer.comm
    s = trainer.strategy
    # under a pipeline the gradients are reduced once, after the flush (ZeRO-3 counts its gathers per micro-batch)
    micro = trainer.accumulation if trainer.pipeline is None or getattr(s, "chunk_units", None) else 1
    expected_bytes = s.expected_bytes_sent(micro) if hasattr(s, "shard") else s.expected_bytes_sent()
    expected_bytes -= scalars_in_other_rows(trainer)
    tp = _tp_rank_summary(trainer) if trainer.grid is not None and trainer.grid.tp_size > 1 else None
    cp = context_summary(trainer) if trainer.grid is not None and trainer.grid.cp_size > 1 else None
    moe = expert_accounting.rank_summary(trainer)        # experts: load, drops, memory, all-to-all bytes
    if tp and moe and tp["bytes_sent_per_step_expected"] is not None:
        tp["bytes_sent_per_step_expected"] = tp_bytes_with_experts(trainer, moe, tp["bytes_sent_per_step_expected"])
    others = (tp["bytes_sent_per_step"] if tp else 0) + (cp["bytes_sent_per_step"] if cp else 0) \
        + (moe["all_to_all_bytes_per_step"] if moe else 0) + pipeline_bytes_per_step(trainer)
    return {
        "rank": trainer.rank,
        "coords": dict(trainer.grid.coords) if trainer.grid is not None else {"dp": trainer.rank, "tp": 0, "pp": 0},
        "pipeline": trainer.pipeline.measured() if trainer.pipeline is not None else None,
        "memory": dev.memory.summary(),
        "host_memory": dev.host.summary(),
        "flops": dev.flops,
        "matmul_flops": dev.matmul_flops,
        "recompute_flops": sum(dev.flops_by_op.get(f"recompute {op}", 0) for op in ("linear", "attention", "matmul")),
        "sim_time": dev.clock.time,
        "comm": comm_totals(comm.log if comm is not None else None),
        "data_parallel": {
            "strategy": s.name,
            "model_states": s.model_states,
            "model_states_expected": s.expected_model_states(),
            # the step's bytes beyond the tensor- and context-parallel groups' (their sections count them)
            "bytes_sent_per_step": trainer.history[-1].get("bytes_sent", 0) - others if trainer.history else 0,
            "bytes_sent_per_step_expected": expected_bytes,
            "shard_elements": getattr(s, "shard", None),
        },
        "tensor_parallel": tp,
        "context_parallel": cp,
        "moe": moe,
        "bytes_sent_last_step": trainer.history[-1].get("bytes_sent", 0) if trainer.history else 0,
    }


def scalars_in_other_rows(trainer) -> int:
    """Bytes of the strategy's one-element all-reduces (:meth:`~minidist.parallel.data.base.LocalStrategy.scalar_groups`)
    that the report measures in another row, so not in the data-parallel one: those on a group of
    the tensor-parallel group's ranks (``grid.mp`` with one pipeline stage, the world with one
    data-parallel replica: the ``tensor_parallel`` section counts every collective on them) and
    those on the pipeline's tied-embedding pair (``grid.mp`` of a two-stage pipeline without tp:
    :func:`pipeline_bytes_per_step` counts them). Under expert parallelism: the joint verdict's
    and norm's too (:meth:`~minidist.parallel.expert.ExpertDataParallel.scalar_groups`)."""
    g, s = trainer.grid, trainer.strategy
    if g is None:
        return 0
    elsewhere = set()
    if g.tp_size > 1:
        elsewhere.add(g.tp.group)
    if trainer.pipeline is not None and trainer.pipeline.tied_group is not None:
        elsewhere.add(trainer.pipeline.tied_group.group)
    return sum(2 * (c.size - 1) * 8 for c in s.scalar_groups() if c.group in elsewhere)


def tp_bytes_with_experts(trainer, moe: dict, dense: int) -> int | None:
    """The tensor-parallel bytes formula of a rank with MoE blocks: the dense model's ``dense``
    plus, per micro-batch, what its MoE blocks' collectives on slot buffers send in place of
    the dense MLP's (:func:`minidist.estimate.moe_grid.tp_bytes_change`). None (not modelled)
    where full recomputation re-runs a MoE block: its forward's collectives run again on slots."""
    if moe["recomputed_blocks"]:
        return None
    c, par = trainer.model_config, trainer.cfg["parallel"]
    w = 2 if trainer.precision is not None else np.dtype(trainer.cfg["dtype"]).itemsize
    change = tp_bytes_change(len(moe["expert_ids"]), trainer.cfg["model"]["moe"], par["expert"], trainer.micro_batch,
                             trainer.dataset.seq_len, c.n_embd, trainer.grid.tp_size, w,
                             trainer.model.layers.sequence_parallel, c.bias)
    return dense + trainer.accumulation * change


def attention_backward_blocks(model) -> list:
    """The ids of the blocks whose attention core runs a backward: those whose q, k, v need a
    gradient, because the block's input does (a trainable parameter upstream, or a pipeline
    stage's received input) or its LayerNorm or ``c_attn`` holds a trainable parameter (LoRA on
    ``c_attn``). Under fine-tuning with frozen embeddings the first blocks before any adapter
    run none (ADAPTER, or LoRA on ``c_fc`` only: block 0)."""
    named = list(model.named_parameters())
    grad = not getattr(model, "pre_process", True) or any(
        p.requires_grad for n, p in named if n.startswith(("transformer.wte.", "transformer.wpe.")))
    out = []
    for i in getattr(model, "layer_ids", None) or []:
        block = list(model.transformer.h[i].named_parameters())
        if grad or any(p.requires_grad for n, p in block if n.startswith(("ln_1.", "attn.c_attn."))):
            out.append(i)
        grad = grad or any(p.requires_grad for _, p in block)
    return out


def context_summary(trainer) -> dict:
    """The report's ``context_parallel`` section of one rank: the bytes its attention sent on
    ``grid.cp`` in the last step beside :func:`minidist.estimate.context.context_bytes_per_step`,
    and its activation peak (each rank keeps its s/cp tokens' activations)."""
    par, c = trainer.cfg["parallel"], trainer.model_config
    log, group = getattr(trainer, "step_log", None), trainer.grid.cp.group
    ops = ("ring_attention", "ring_attention_backward") if par["context"]["algorithm"] == "ring" else ("all_to_all",)
    sent = sum(x.bytes_sent for x in (log.collectives if log is not None else []) if x.group == group and x.op in ops)
    # the activations' format on the wire (the ring's dK, dV: fp32 accumulators, the formula's default)
    w = DTYPE_BYTES[trainer.autocast_dtype] if trainer.autocast_dtype else np.dtype(trainer.cfg["dtype"]).itemsize
    expected = context_bytes_per_step(par["context"]["algorithm"], trainer.grid.cp_size, c.n_layer,
                                      trainer.micro_batch, trainer.dataset.seq_len, c.n_embd, trainer.accumulation,
                                      w, trainer.grid.tp_size, trainer.cfg["activation_checkpointing"]["granularity"])
    held = getattr(trainer.model, "layer_ids", None)
    if held is not None:
        # the formula runs every layer's attention backward (and, recomputing, its forward again);
        # under fine-tuning a block whose q, k, v need no gradient runs neither, and full
        # recomputation re-runs only the units with something to differentiate (rerun_blocks)
        granularity = trainer.cfg["activation_checkpointing"]["granularity"]
        backward = attention_backward_blocks(trainer.model)
        recomputed = {"none": 0, "selective": len(backward), "full": len(rerun_blocks(trainer.model))}[granularity]
        expected["bytes_per_step"] -= trainer.accumulation * (
            (len(held) - len(backward)) * expected["per_layer_backward"]
            + (len(held) - recomputed) * expected["per_layer_recomputed"])
    return {"cp": trainer.grid.cp_size, "algorithm": par["context"]["algorithm"],
            "tokens_per_rank": trainer.dataset.seq_len // trainer.grid.cp_size, "bytes_sent_per_step": sent,
            "bytes_sent_per_step_expected": expected["bytes_per_step"],
            "activations_peak": trainer.device.memory.max_by_category.get("activations", 0)}


def format_context_parallel(report: dict) -> str:
    """Rank 0's context-parallel figures: measured beside the formula."""
    c = report["ranks"][0]["context_parallel"]
    return (f"context parallel: {c['algorithm']}, cp = {c['cp']}, {c['tokens_per_rank']} tokens per rank; attention "
            f"bytes sent per step {c['bytes_sent_per_step']} measured, {c['bytes_sent_per_step_expected']} by the "
            f"formula (minidist.estimate.context); activation peak {c['activations_peak']} B")


def comm_totals(log) -> dict:
    """Bytes a rank sent and received over the whole run, in total and per op."""
    by_op = log.summary() if log is not None else {}
    return {"bytes_sent": sum(v["bytes_sent"] for v in by_op.values()),
            "bytes_received": sum(v["bytes_received"] for v in by_op.values()), "by_op": by_op}


def pipeline_bytes_per_step(trainer) -> int:
    """What a pipeline rank sent in the last step beyond its data-parallel strategy: the
    activations and gradients to its neighbours (point-to-point) and the tied embedding's
    all-reduce between the first and the last stage (:mod:`minidist.parallel.pipeline.engine`)."""
    log, engine = getattr(trainer, "step_log", None), trainer.pipeline
    if engine is None or log is None:
        return 0
    tied = engine.tied_group.group if engine.tied_group is not None else None
    return log.bytes_sent("send") + sum(c.bytes_sent for c in log.collectives if tied is not None and c.group == tied)


def build_report(trainer, ranks: list[dict]) -> dict:
    """The whole job's report, assembled on rank 0 from every rank's :func:`rank_report`."""
    report = {
        "config": trainer.cfg,
        "world_size": trainer.world_size,
        "model": {"n_params": trainer.n_params, **dataclasses.asdict(trainer.model_config)},   # moe: a dict too
        "steps": trainer.history,
        "final": trainer.final,
        "wall_time_s": trainer.wall_time,
        "ranks": ranks,
        "data_parallel": {"strategy": trainer.strategy.name, "formula": formulas(trainer)},
    }
    if trainer.pipeline is not None:     # measured bubble beside the theory
        report["pipeline"] = pipeline_report(trainer, ranks)
        report["pipeline"].update(pipeline_theory(report["pipeline"]))
    report["estimate"] = estimate(trainer.cfg, trainer.world_size)
    report["activation_checkpointing"] = recompute_report(trainer, ranks, report["estimate"])
    par = trainer.cfg["parallel"]
    grid3d = None
    if ranks[0].get("moe") or par["tensor"] * par["pipeline"] * par["expert"] > 1:    # every pipeline rank's figures
        try:
            grid3d = estimate_for_config(trainer.cfg, trainer.world_size, trainer.model_config.vocab_size)
        except ValueError as err:        # a layout grid3d does not model: the report says so
            report["layout_refused"] = str(err)
    if ranks[0].get("moe"):             # the experts per pipeline rank (minidist.estimate.moe_grid), load per step
        report["moe"] = {**moe_section_estimate(trainer, grid3d), "load": expert_accounting.job_load(ranks)}
    if grid3d is not None and par["tensor"] * par["pipeline"] * par["expert"] > 1:
        report["layout"] = layout_report(trainer, ranks, report.get("pipeline"), grid3d)
    return report


def recompute_report(trainer, ranks: list, est: dict) -> dict:
    """Activation checkpointing: rank 0's measured activation peak and FLOPs per step (the
    recomputed forward's apart) beside the estimator's figures for the same config."""
    ac, steps = trainer.cfg["activation_checkpointing"], max(len(trainer.history), 1)
    r0 = ranks[0]
    return {"granularity": ac["granularity"], "method": ac["method"], "num_layers": ac["num_layers"],
            "measured": {"activations_peak": r0["memory"]["max_by_category"].get("activations", 0),
                         "matmul_flops_per_step": r0["matmul_flops"] / steps,
                         "recompute_flops_per_step": r0["recompute_flops"] / steps},
            "estimate": {"activations": est["activations"]["total"],
                         "flops_per_step_per_rank": est["flops"]["flops"] / trainer.world_size,
                         "recompute_flops_per_step_per_rank": est["flops"]["recompute_flops"] / trainer.world_size}}


def format_recompute(report: dict) -> str:
    r = report["activation_checkpointing"]
    m, e = r["measured"], r["estimate"]
    return "\n".join([
        f"activation checkpointing: {r['granularity']}" + (f" ({r['method']}, num_layers {r['num_layers']})"
                                                           if r["granularity"] == "full" else ""),
        f"{'rank 0':<26} {'measured':>12} {'estimate':>12}",
        f"{'activation peak B':<26} {m['activations_peak']:>12.0f} {e['activations']:>12.0f}",
        f"{'FLOPs per step':<26} {m['matmul_flops_per_step']:>12.4g} {e['flops_per_step_per_rank']:>12.4g}",
        f"{'recomputed FLOPs per step':<26} {m['recompute_flops_per_step']:>12.4g} "
        f"{e['recompute_flops_per_step_per_rank']:>12.4g}",
        "(measured peak: during backward, one recomputed unit's activations on top of the checkpoints, fp32 "
        "LayerNorm inputs and per-token statistics included; estimate: Korthikanti's terms in the run's precision "
        "at the end of forward. FLOPs: matmuls, estimate 6·N·D + attention with N all parameters)"])


def distill_rank_report(run) -> dict:
    """One rank of a distillation job (:class:`minidist.distill.runner.DistillRank`): its
    device and whole-run traffic, its student's data-parallel figures, its part of the
    ``distillation`` section (teacher and student memory apart, bytes streamed)."""
    dev = run.device
    rr = rank_report(run.student) if run.student is not None else {
        "memory": dev.memory.summary(), "host_memory": dev.host.summary(), "flops": dev.flops,
        "sim_time": dev.clock.time}
    grid = run.student.grid if run.student is not None else None       # a teacher rank: none of the student's
    coords = dict(grid.coords) if grid is not None else {"dp": max(run.rank - run.d["teacher_ranks"], 0), "tp": 0, "pp": 0}
    rr.update(rank=run.rank, role=run.role, coords=coords,
              comm=comm_totals(run.comm.log if run.comm is not None else None), distillation=run.section())
    return rr


def build_distill_report(run, ranks: list[dict]) -> dict:
    """A distillation job's report, on rank 0 from every rank's :func:`distill_rank_report`:
    the student's steps and final figures, and ``distillation`` with the teacher's and the
    student's figures, the losses' parts per step and the teacher → student bytes."""
    parts = [r["distillation"] for r in ranks]
    student = next(p["student"] for p in parts if "student" in p)
    teacher = parts[0]["teacher"]
    d = run.d
    full, sent = student["bytes_per_step_full_logits"], student["bytes_per_step_expected"]
    return {
        "config": run.cfg, "world_size": run.world_size,
        "model": {"n_params": student["n_params"], **student["model"]},
        "steps": student["history"], "final": student["final"], "ranks": ranks,
        "distillation": {
            **{k: d[k] for k in ("temperature", "alpha", "patient", "teacher_ranks", "top_k")},
            "teacher": dict(teacher),
            "student": {k: v for k, v in student.items() if k != "history"},
            "losses": [{k: h[k] for k in ("step", "loss", "kl", "ce", "pkd")} for h in student["history"]],
            "stream": {"bytes_per_step_per_student": sent, "bytes_per_step_full_logits": full,
                       "saved_fraction": 1 - sent / full if full else 0.0,
                       "bytes_sent": sum(p.get("stream", {}).get("bytes_sent", 0) for p in parts),
                       "bytes_received": sum(p.get("stream", {}).get("bytes_received", 0) for p in parts)},
        },
    }


def format_distillation(report: dict) -> str:
    """A few lines: teacher and student size, memory and held-out figures, the streamed bytes."""
    d = report["distillation"]
    t, s = d["teacher"], d["student"]
    fig = lambda f: ", ".join(f"{k} {v:.4f}" for k, v in f.items())             # noqa: E731
    lines = [f"distillation: T = {d['temperature']:g}, alpha = {d['alpha']:g}, patient = {d['patient']}, "
             f"top_k = {d['top_k']}, teacher_ranks = {d['teacher_ranks']}",
             f"  teacher: {t['n_params']:,} params, {t['steps']} steps, {fig(t['final'])}; frozen: "
             f"parameters {t['memory']['parameters']:,} B ({t['bytes_per_parameter']:g} B/param), gradients "
             f"{t['memory']['gradients']} B, optimizer states {t['memory']['optimizer_states']} B",
             f"  student: {s['n_params']:,} params, {fig(s['final'])}; model states "
             f"{s['model_states']['total']:,} B (parameters {s['model_states']['parameters']:,}, gradients "
             f"{s['model_states']['gradients']:,}, optimizer {s['model_states']['optimizer_states']:,})",
             f"  last step: loss {d['losses'][-1]['loss']:.4f} = parts kl {d['losses'][-1]['kl']:.4f}, "
             f"ce {d['losses'][-1]['ce']:.4f}, pkd {d['losses'][-1]['pkd']:.4f}"]
    st = d["stream"]
    if d["teacher_ranks"]:
        lines.append(f"  teacher -> students: {st['bytes_sent']:,} B sent in all, {st['bytes_per_step_per_student']:,} "
                     f"B per student per step ({st['bytes_per_step_full_logits']:,} B with full logits: "
                     f"{100 * st['saved_fraction']:.1f}% saved)")
    return "\n".join(lines)


def _number_format(report, f) -> str:
    """The run's number format and K: the formulas' fp32 row counts 4-byte words (K = 8 with Adam);
    a float64 run stores 8 bytes each, so its K is twice that."""
    precision = f.get("precision", "fp32")
    if precision == "fp32" and report["config"].get("dtype") == "float64" and f.get("K") is not None:
        return f"float64, K = {2 * f['K']:g}"
    return f"{precision}, K = {f.get('K')}"


def format_data_parallel(report: dict) -> str:
    """A small table: per rank, measured model states and bytes per step beside the formula."""
    f = report["data_parallel"]["formula"]
    par = report["config"]["parallel"]
    tp, pp, cp = par["tensor"], par["pipeline"], par["context"]["size"]
    dp = report["world_size"] // (tp * pp * cp)
    ep = par.get("expert", 1)              # the ep ranks are data-parallel ranks: dp here counts them
    layout = f"tensor {tp} × pipeline {pp} × data {dp}" + (f" (dp {dp // ep} × ep {ep})" if ep > 1 else "") \
        + (f" × context {cp}" if cp > 1 else "")
    strategy = report["data_parallel"]["strategy"]
    lines = [f"{layout}: data parallel {strategy} over {dp} replica(s), {report['world_size']} rank(s) in all, "
             f"Ψ = {report['model']['n_params']:,} parameters × {f['bytes_per_element']} B "
             f"({_number_format(report, f)})",
             f"{'rank':>4} {'params B':>10} {'grads B':>10} {'optim B':>10} {'host B':>10} {'sent/step B':>12}"]
    for note, row in (("  (workers)" if f.get("root") else "", f), ("  (the root)", f.get("root"))):
        fm = row and row["model_states"]
        if fm:
            lines.append(f"{'formula':>4} {fm['parameters']:>10.0f} {fm['gradients']:>10.0f} "
                         f"{fm['optimizer_states']:>10.0f} {fm['host']:>10.0f} {row['bytes_sent_per_step']:>12.0f}{note}")
    if f.get("not_modelled"):
        lines.append(f"formula: not modelled — {f['not_modelled']}")
    for r in report["ranks"]:
        m = r["data_parallel"]["model_states"] or {}
        lines.append(f"{r['rank']:>4} {m.get('parameters', 0):>10} {m.get('gradients', 0):>10} "
                     f"{m.get('optimizer_states', 0):>10} {m.get('host', 0):>10} "
                     f"{r['data_parallel']['bytes_sent_per_step']:>12}")
    if report["ranks"][0].get("tensor_parallel"):
        lines.append(format_tensor_parallel(report))
    if report["ranks"][0].get("context_parallel"):
        lines.append(format_context_parallel(report))
    if report.get("moe"):
        lines.append(expert_accounting.format_moe(report["moe"], report["ranks"][0]))
    if report.get("layout"):
        lines.append(format_layout(report))
    if report.get("activation_checkpointing", {}).get("granularity", "none") != "none":
        lines.append(format_recompute(report))
    return "\n".join(lines)


def format_tensor_parallel(report: dict) -> str:
    """Rank 0's tensor-parallel figures: measured, the engine's formula, and the estimator's
    (Korthikanti et al. 2022 in the run's precision, with 1-byte dropout masks; layers only for traffic)."""
    tp, est = report["ranks"][0]["tensor_parallel"], report.get("estimate") or {}
    pad = (f"vocabulary {tp['vocab_size']} padded to {tp['padded_vocab_size']} (Megatron's "
           f"make_vocab_size_divisible_by {tp['make_vocab_size_divisible_by']} × t {tp['tp']}; padded logits masked)"
           if tp["padded_vocab_size"] != tp["vocab_size"] else f"vocabulary {tp['vocab_size']} (no padding)")
    exp = tp["activations_expected"]
    act_est = (est.get("activations") or {}).get("total")
    tp_est = (est.get("comm") or {}).get("tp_bytes")
    fmt = lambda v: "-" if v is None else f"{v:.0f}"
    return "\n".join([
        f"tensor parallel: t = {tp['tp']}, sequence parallel {'on' if tp['sequence_parallel'] else 'off'}; {pad}",
        f"{'rank 0':<22} {'measured':>10} {'formula':>10} {'estimate':>10}",
        f"{'activation peak B':<22} {tp['activations_peak']:>10} {fmt(exp):>10} {fmt(act_est):>10}",
        f"{'TP bytes sent/step':<22} {tp['bytes_sent_per_step']:>10} {fmt(tp['bytes_sent_per_step_expected']):>10} "
        f"{fmt(tp_est):>10}",
        "(formula: the engine's inventory and every TP collective; estimate: Korthikanti's terms in the run's "
        "precision with dropout masks, layer traffic only)"])


def write_report(report: dict, path) -> None:
    with open(path, "w") as f:
        json.dump(report, f, indent=1, default=jsonable)
