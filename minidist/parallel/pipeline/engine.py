"""The pipelined training step: one flush of the schedule, then the gradients' reductions,
then the optimizer step (DeepSpeed's ``PipelineEngine.train_batch``, Megatron's
``forward_backward_pipelining_*`` followed by ``finalize_model_grads``).

A step of ``gradient_accumulation_steps`` = m micro-batches:

1. the executor runs the schedule: m micro-batches through every chunk, forward and back,
   each rank accumulating the gradients of the parameters it holds;
2. the **tied embedding**: the first chunk's ``wte`` and the last chunk's copy (the LM head)
   are one weight in the one-rank model, so their gradients are summed by an all-reduce
   between the two ranks holding them (Megatron's embedding group) — nothing to do when one
   rank holds both (the V schedules);
3. **data parallelism** over ``grid.dp``: the strategy (DDP or ZeRO-1/2/3) reduces the stage's
   gradients across the replicas of that stage — launched only now, after the flush, as
   DeepSpeed's pipeline engine does — and takes the optimizer step. Under ZeRO-3 the stage's
   parameters are sharded over ``grid.dp`` too: the executor runs every action inside the
   strategy's ``pipeline_action``, which gathers the chunk's parameters for each micro-batch's
   forward and backward and releases them after (:mod:`minidist.parallel.data.zero3`).

The global batch of a step is m micro-batches of ``train_micro_batch_size_per_gpu × dp``
sequences, each data-parallel replica taking its rows: the batch of a one-rank run with the
same accumulation and micro-batch × dp sequences.
"""
from __future__ import annotations

import contextlib
import contextvars

import numpy as np

from ... import distributed as dist
from ...model import GPT
from . import build_schedule
from .schedule import replay
from .executor import PipelineExecutor
from .stage import build_stage


class PipelineEngine:
    """This rank's part of the pipeline: its schedule, its chunks (``model``: the GPT holding
    them) and the executor, on the trainer's grid. Built inside ``with device:``."""

    def __init__(self, cfg: dict, model_config, grid, layers, device):
        par = cfg["parallel"]
        self.grid, self.layers, self.cfg = grid, layers, cfg
        self.pp_rank = self.grid.coords["pp"]
        self.schedule = build_schedule(par["schedule"], par["pipeline"], cfg["gradient_accumulation_steps"],
                                       par["virtual_stages"], times=par["pass_times"])
        self.chunks, self.model = build_stage(model_config, self.schedule, self.pp_rank, seed=cfg["seed"],
                                              dtype=np.dtype(cfg["dtype"]), layers=layers)
        self._whole = None                       # the whole model for evaluation, built when first asked
        self.executor = PipelineExecutor(self.schedule, self.chunks, self.grid.pp, device,
                                         overlap=par.get("overlap_f_b", False))
        s = self.schedule
        self.last_rank = s.stage_to_rank[-1]
        self.holds_loss = self.pp_rank == self.last_rank
        # the tied wte lives on the first chunk's rank and, as the LM head, on the last chunk's
        self.tied_ranks = sorted({s.stage_to_rank[0], s.stage_to_rank[-1]})
        self.tied_group = self.grid.pp.split(color=0 if self.pp_rank in self.tied_ranks else None,
                                             key=self.pp_rank)
        self.steps: list = []                    # per step: the executor's measurements
        self.strategy = None                     # the data-parallel strategy, once attached

    def attach(self, strategy) -> None:
        """The trainer's strategy over ``grid.dp``; ZeRO-3 learns which units each chunk runs."""
        self.strategy = strategy
        if hasattr(strategy, "attach_pipeline"):
            strategy.attach_pipeline(self.chunks)

    @property
    def dp_comm(self):
        return self.grid.dp if self.grid.dp_size > 1 else None

    def train_step(self, trainer, step: int) -> float:
        """One pipelined optimizer step of ``trainer`` (a :class:`~minidist.training.Trainer`)."""
        dev, strategy, m = trainer.device, trainer.strategy, trainer.accumulation
        mark = trainer.comm.log.mark()
        batches = [trainer.batch(step, i) for i in range(m)]
        inv_m = np.asarray(1.0 / m, dtype=np.dtype(trainer.cfg["dtype"]))
        quiet = np.errstate(over="ignore", invalid="ignore") if trainer.precision is not None \
            else contextlib.nullcontext()
        with dev, quiet:
            strategy.begin_micro(0, 2)           # no_sync: the data-parallel reduction waits for the flush
            run = self.executor.run(
                [x for x, _ in batches], [y for _, y in batches],
                lambda loss: strategy.scale_loss(loss * inv_m),
                lambda i: self.model.set_dropout_key(step, i, row_offset=trainer.dp_rank * trainer.micro_batch),
                fmt=trainer.autocast_dtype, around=getattr(strategy, "pipeline_action", None))
            self.reduce_tied_embedding()
            strategy.begin_micro(1, 2)
            strategy.after_backward()
            strategy.step()
            dev.clock.sync()
        self.steps.append(run)
        trainer.step_log = trainer.comm.log.since(mark)
        # the last chunk's loss, plus the MoE aux and z losses of this rank's other chunks (0 without)
        loss = (float(np.mean(run["losses"])) if self.holds_loss else 0.0) + run["moe_losses"]
        mp = trainer.precision.history[-1] if trainer.precision is not None else None
        trainer.history.append({"step": step, "loss": loss, "loss_scale": mp.scale if mp else None,
                                "skipped": mp.skipped if mp else False, "sim_time": dev.clock.time,
                                "bytes_sent": trainer.step_log.bytes_sent()})
        if run["moe"]:                           # this rank's MoE layers: load per expert, drops
            trainer.history[-1]["moe"] = run["moe"]
        return loss

    def reduce_tied_embedding(self) -> None:
        if self.tied_group is None or self.tied_group.size == 1:
            return
        wte = self.model.transformer.wte.weight       # the embedding, or the last stage's copy
        grad = wte.grad if wte.grad is not None else np.zeros_like(wte.data)
        # why: wte (first chunk) and the LM head (last chunk) are one weight: each rank has
        # only its part of the gradient, and both copies must take the same step
        wte.grad = dist.all_reduce(self.tied_group, grad, op="sum", algorithm="ring")

    def average_losses(self, trainer) -> None:
        """Only the last chunk's ranks know the language-model loss, and each stage the MoE aux and
        z losses of its chunks (every tp rank the same values): sum over the world what tp rank 0
        of every stage of every replica holds, divide by the replicas, once at the end of the run.
        A step restored from a checkpoint of another layout holds the job's mean on every rank
        (``job_mean``): each stage counts its 1/pp share of it."""
        counts = self.grid.coords["tp"] == 0      # every stage: the MoE losses of its chunks are its part
        pp = self.grid.pp_size
        local = np.array([(h["loss"] / pp if h.get("job_mean") else h["loss"]) if counts else 0.0
                          for h in trainer.history], dtype=np.float64)
        # why: the loss of the global batch is the mean over the dp replicas of their stages' parts
        total = dist.all_reduce(trainer.comm, local, op="sum", algorithm="ring")
        for h, v in zip(trainer.history, total / trainer.dp_size):     # replicas: dp (× ep under experts)
            h["rank_loss"], h["loss"] = h["loss"], float(v)

    def whole_model(self) -> GPT:
        """Every rank's copy of the whole model (its tensor-parallel shards), for evaluation,
        which is not pipelined here: each parameter broadcast over ``grid.pp`` by a rank that
        trained it. Built off the device once (not charged), refreshed at every call."""
        cfg = self.cfg
        if self._whole is None:
            self._whole = contextvars.Context().run(
                lambda: GPT(self.model.config, seed=cfg["seed"], dtype=np.dtype(cfg["dtype"]), layers=self.layers))
        if getattr(self.strategy, "stage", 0) == 3:    # ZeRO-3: each rank holds 1/dp of its stages (a collective)
            mine = self.strategy.full_parameters()
        else:
            mine = {name: p.data for name, p in self.model.named_parameters()}
        # control channel (not logged): which pipeline rank holds which parameter
        held = self.grid.pp.exchange_objects(sorted(mine))
        for name, p in self._whole.named_parameters():
            owner = next(r for r, names in enumerate(held) if name in names)
            # why: only ``owner`` trained this parameter; the others hold none or an old copy
            p.data[...] = dist.broadcast(self.grid.pp, mine[name] if name in mine else p.data, root=owner)
        return self._whole

    def measured(self) -> dict:
        """This rank's measurements of the last step (the report's ``pipeline`` section)."""
        run = self.steps[-1]
        return {"pp_rank": self.pp_rank, "t_begin": run["t_begin"], "t_end": run["t_end"], "busy": run["busy"],
                "peak_in_flight": run["peak_in_flight"],
                "timeline": [(a.op, a.micro_batch, a.stage, t0, t1) for a, t0, t1 in run["events"]],
                # DualPipe's overlapped F&B pairs (parallel.overlap_f_b): how many, what they hid
                "overlapped_pairs": len(run["pairs"]), "hidden_communication": sum(p["hidden"] for p in run["pairs"])}


def bubble_from_ranks(measured: list) -> float:
    """1 − Σ busy / (ranks × step time) over one step of every pipeline rank."""
    begin = min(r["t_begin"] for r in measured)
    end = max(r["t_end"] for r in measured)
    return 1.0 - sum(r["busy"] for r in measured) / (len(measured) * (end - begin)) if end > begin else 0.0


def pipeline_report(trainer, ranks: list) -> dict:
    """The measured part of the report's ``pipeline`` section: the last step's bubble
    and peak in-flight micro-batches of the first replica's pipeline ranks (the report adds the
    theory beside them from :mod:`minidist.estimate`)."""
    engine = trainer.pipeline
    s = engine.schedule
    mine = sorted((r["pipeline"] for r in ranks if r.get("pipeline") and r["coords"]["dp"] == 0),
                  key=lambda r: r["pp_rank"])
    return {"schedule": s.name, "ranks": s.ranks, "micro_batches": s.micro_batches,
            "virtual_stages": s.virtual_stages, "stage_to_rank": s.stage_to_rank, "pass_times": list(s.times),
            "bubble_fraction": bubble_from_ranks(mine) if mine else None,
            "peak_in_flight": [r["peak_in_flight"] for r in mine],
            "step_time": max(r["t_end"] for r in mine) - min(r["t_begin"] for r in mine) if mine else None,
            "overlap_f_b": engine.executor.overlap,
            "hidden_communication": sum(r.get("hidden_communication", 0.0) for r in mine),
            **(step_split(s, mine) if mine else {})}


def step_split(s, measured: list) -> dict:
    """The step of every pipeline rank split into compute, exposed communication and idle
    (shares of ranks × step time, summing to 1), and ``bubble_fraction_without_communication``:
    the idle share of the executed actions replayed with free messages (:func:`~.schedule.replay`),
    what the schedule alone leaves idle — the figure its theory predicts."""
    step = max(r["t_end"] for r in measured) - min(r["t_begin"] for r in measured)
    if step <= 0:
        return {}
    p, busy = len(measured), sum(r["busy"] for r in measured)
    free = replay(s, [r["timeline"] for r in measured])
    return {"bubble_fraction_without_communication": free.bubble_fraction,
            "step_split": {"compute": busy / (p * step), "exposed_communication": (step - free.step_time) / step,
                           "idle": (p * free.step_time - busy) / (p * step)}}
