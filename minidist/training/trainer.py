"""The training loop: config → model, data, optimizer on a simulated device → steps → report.

One :class:`Trainer` runs on one rank. The parallel strategies of :mod:`minidist.parallel`
plug in as the ``strategy`` that decides how gradients are synchronised and how the
optimizer step is taken (single-rank training when ``comm`` is None; otherwise the world
size comes from ``comm``: DDP, the parameter server or ZeRO-1/2/3 per the config).

Global batch semantics: in step ``s``, micro-step ``m``, every rank draws the same global
batch of ``micro × dp`` sequences (dp = the data-parallel degree: world size ÷ (tp·pp)) from
``(seed, s·k + m)`` and takes its data-parallel rank's slice, so that dp replicas with
micro-batch b see exactly what one rank with micro-batch dp·b sees; tensor- and
pipeline-parallel partners share one slice.
Dropout follows the same rule: each mask row is drawn from a stream keyed by (seed, step,
micro-step, row of the global batch) (:class:`~minidist.nn.DropoutRNG`), so a rank's masks
are its slice of the masks one rank draws, and every data-parallel layout trains exactly
like one rank.

Mixed precision (``fp16.enabled`` / ``bf16.enabled``): forward runs under
:class:`~minidist.autocast`, backward starts from the scaled loss, and the
strategy rounds gradients, agrees on overflow, and updates the fp32 masters (or skips).
The history records the loss scale each step used and whether it was skipped.
"""
from __future__ import annotations

import contextlib
import sys
import time

import numpy as np
from tqdm import tqdm

from .. import distributed as dist
from .. import optim
from .config import ConfigError, data_config, load_config
from .data import TextDataset, greedy_decode, make_dataset, shard_batch
from ..device import Device, off_device
from ..model import GPT, GPTConfig, Recompute, one_rank_parameters, split_of
from .. import moe
from ..parallel import build_strategy
from ..parallel import context as context_parallel
from ..parallel import expert as expert_parallel
from ..parallel import tensor as tensor_parallel
from ..parallel.grid import ProcessGrid
from ..parallel.pipeline.engine import PipelineEngine
from ..parallel.split import gather_state_dict, norm_duplicates, whole_tensor_squares
from ..precision import autocast, precision_from_config
from ..tensor import no_grad


class TrainingDivergedError(FloatingPointError):
    """The loss became inf/NaN and nothing (no loss scaler) could skip the step."""


class Trainer:
    """Trains the GPT of ``config`` on this rank. ``comm`` is None for single-rank runs."""

    def __init__(self, config=None, comm=None, device=None):
        self.world_size = comm.size if comm is not None else 1
        self.rank = comm.rank if comm is not None else 0
        self.cfg = cfg = load_config(config, self.world_size)
        if cfg["distillation"] is not None:
            raise ConfigError("distillation", "a distillation run trains a teacher, then a student: run it with "
                                              "minidist.distill.distill_rank (python -m minidist.train does)")
        if cfg["peft"] is not None and type(self).prepare_model is Trainer.prepare_model:
            raise ConfigError("peft", "a fine-tuning run freezes a pretrained model and adds the method's parameters: "
                                      "run it with minidist.peft.PeftTrainer (python -m minidist.train does)")
        self.comm = comm
        self.device = device or (comm.device if comm is not None else Device(cfg["device"], rank=0))
        self.dataset = make_dataset(data_config(cfg))
        self.val_dataset = make_dataset(data_config(cfg), split="val") if isinstance(self.dataset, TextDataset) \
            else self.dataset
        mcfg = dict(cfg["model"])
        if mcfg["vocab_size"] is None:
            mcfg["vocab_size"] = self.dataset.vocab_size
        elif mcfg["vocab_size"] < self.dataset.vocab_size:
            raise ConfigError("model.vocab_size", f"{mcfg['vocab_size']} is smaller than the dataset's "
                                                  f"vocabulary ({self.dataset.vocab_size}); remove the key to derive it")
        self.model_config = GPTConfig(**mcfg)
        # the process grid (minidist.parallel.grid), built here and nowhere else: tp × cp × dp × pp ranks
        par = cfg["parallel"]
        tp, pp, cp, ep = par["tensor"], par["pipeline"], par["context"]["size"], par["expert"]
        self.grid = ProcessGrid(comm, tp=tp, pp=pp, cp=cp, ep=ep) if comm is not None else None
        model_parallel = tp * pp > 1
        # gradients are averaged over grid.dp (the world itself when nothing else splits it), over
        # grid.dp_cp under context parallelism (cp ranks hold the same parameters, other tokens),
        # over grid.dp_ep under expert parallelism (ep ranks read other micro-batches; experts: grid.dp)
        data = None if self.grid is None else self.grid.dp_ep if ep > 1 else self.grid.dp_cp
        self.dp_comm = comm if not (model_parallel or cp > 1) else (data if data.size > 1 else None)
        # the data: dp slices of the global batch (cp ranks of one slice share it; ep ranks do not)
        self.dp_size = self.grid.dp_size * ep if self.grid is not None else 1
        self.dp_rank = self.grid.coords["dp"] * ep + self.grid.coords.get("ep", 0) if self.grid is not None else 0
        # the layer factory: plain or Megatron's, on this cp rank's positions under context parallelism
        self.layers = context_parallel.layers_for(cfg, self.grid, tensor_parallel.layers_for(cfg, self.grid))
        self.layers = expert_parallel.layers_for(cfg, self.grid, self.layers)     # E/ep experts per ep rank
        self.pipeline = None                 # a PipelineEngine when parallel.pipeline > 1
        dtype = np.dtype(cfg["dtype"])
        with self.device:
            if pp > 1:                       # this rank's chunks of the one GPT (parallel/pipeline/stage.py)
                self.pipeline = PipelineEngine(cfg, self.model_config, self.grid, self.layers, self.device)
                self.model = self.pipeline.model
            else:
                self.model = GPT(self.model_config, seed=cfg["seed"], dtype=dtype, layers=self.layers)
            self.model = self.prepare_model(self.model)
            ac = cfg["activation_checkpointing"]
            partition = tensor_parallel.CheckpointPartition(self.grid.tp) if ac["partition_activations"] else None
            self.model.set_recompute(Recompute(ac["granularity"], ac["method"], ac["num_layers"],
                                               ac["cpu_checkpointing"], partition))
            self.n_params = self.model.num_parameters()          # what this rank holds
            self.precision = precision_from_config(cfg)          # None for fp32 training
            if self.precision is not None and model_parallel:
                self.precision = tensor_parallel.TensorParallelPrecision(self.precision, comm)
            if ep > 1:
                # experts averaged over grid.dp, the rest over grid.dp_ep; on every rank, also a pipeline
                # stage that holds no expert: it takes part in the joint overflow verdict and clipping
                # norm (collectives over the world and grid.mp) with nothing of its own to add
                self.strategy = expert_parallel.build_expert_strategy(
                    build_strategy, cfg, self.model, self._optimizer, self.dp_comm,
                    self.grid.dp if self.grid.dp.size > 1 else None, self.precision, world=comm)
                self.optimizer = self.strategy.optimizer
            else:
                self.optimizer = self._optimizer([p for p in self.model.parameters() if p.requires_grad])
                self.strategy = build_strategy(cfg, self.model, self.optimizer, self.dp_comm, self.precision)
            if self.pipeline is not None:    # ZeRO-3 gathers each chunk's parameters around its actions
                self.pipeline.attach(self.strategy)
            if model_parallel:               # clipping: the norm over every tp shard and pipeline stage (grid.mp)
                self.strategy.count_in_norm(self.grid.mp, norm_duplicates(self.model, self.grid.coords["tp"]))
        self.autocast_dtype = self.precision.dtype if self.precision is not None else None
        self.micro_batch = cfg["train_micro_batch_size_per_gpu"]
        self.accumulation = cfg["gradient_accumulation_steps"]
        self.history: list[dict] = []
        self.start_step = 0                 # where fit() begins: > 0 after minidist.checkpoint's load_into

    def prepare_model(self, model):
        """The model as built, before its optimizer; a fine-tuning run (:mod:`minidist.peft`)
        loads pretrained weights and freezes and adds parameters here."""
        return model

    def build_optimizer(self, params):
        """The optimizer of ``params`` (the trainable ones), from the ``optimizer`` section."""
        return optim.build(self.cfg["optimizer"]["type"], params, deepspeed=True,     # a DeepSpeed config's Adam
                           **self.cfg["optimizer"]["params"])

    def _optimizer(self, params):
        """:meth:`build_optimizer`, told how this rank's slices make whole tensors: under tensor
        parallelism LAMB's trust ratio ‖w‖/‖u‖ sums every tp slice's squares (You et al. 2020
        take it per tensor). Every optimizer the trainer builds goes through here — under expert
        parallelism there are two (the experts' and the rest's, :mod:`minidist.parallel.expert`),
        and each needs it, or each tp rank would scale its slice by its own ratio."""
        opt = self.build_optimizer(params)
        if hasattr(opt, "whole_tensor_squares") and self.grid is not None and self.grid.tp_size > 1:
            opt.whole_tensor_squares = whole_tensor_squares(self.grid.tp)
        return opt

    # -- one step -----------------------------------------------------------------------------
    def batch(self, step: int, micro: int):
        """This rank's micro-batch: a slice of the global batch drawn from (seed, step, micro)."""
        global_b = self.micro_batch * self.dp_size
        x, y = self.dataset.get_batch(global_b, step * self.accumulation + micro, self.cfg["seed"])
        # copies: a rank holds only its slice (a view would keep the whole global batch alive, and
        # the ids the embedding saves would be charged as the global batch's)
        return shard_batch(x, self.dp_rank, self.dp_size).copy(), shard_batch(y, self.dp_rank, self.dp_size).copy()

    def train_step(self, step: int) -> float:
        """One optimizer step over ``gradient_accumulation_steps`` micro-batches.

        Returns this rank's loss (mean over its micro-batches); the history also records
        the bytes this rank sent during the step and the simulated time at its end."""
        if self.pipeline is not None:        # the schedule's flush, then DP and the step (parallel/pipeline/engine.py)
            return self.pipeline.train_step(self, step)
        dev, strategy = self.device, self.strategy
        total, experts = 0.0, {}
        mark = self.comm.log.mark() if self.comm is not None else None
        # fp16 steps that overflow are expected (the loss scaler probes for them): quiet NumPy
        quiet = np.errstate(over="ignore", invalid="ignore") if self.precision is not None else contextlib.nullcontext()
        with dev, quiet:
            for micro in range(self.accumulation):
                strategy.begin_micro(micro, self.accumulation)
                x, y = self.batch(step, micro)
                # dropout masks: this rank's rows of the global batch's masks for (step, micro)
                self.model.set_dropout_key(step, micro, row_offset=self.dp_rank * self.micro_batch)
                with autocast(self.autocast_dtype):
                    loss = self.compute_loss(x, y, step, micro)
                # mean over the accumulated micro-batches (and, by the strategy, over ranks)
                # (1/k in the loss's dtype: a Python float would become a float32 tensor)
                inv_k = np.asarray(1.0 / self.accumulation, dtype=loss.data.dtype)
                strategy.scale_loss(loss * inv_k).backward()
                strategy.after_backward()
                total += float(loss.data) / self.accumulation
                moe.accumulate(experts, self.model)     # load per expert, drops (minidist.moe)
            strategy.step()
            dev.clock.sync()
        self.step_log = self.comm.log.since(mark) if mark is not None else None   # this step's messages
        sent = self.step_log.bytes_sent() if mark is not None else 0
        mp = self.precision.history[-1] if self.precision is not None else None
        self.history.append({"step": step, "loss": total, "loss_scale": mp.scale if mp else None,
                             "skipped": mp.skipped if mp else False, "sim_time": dev.clock.time,
                             "bytes_sent": sent})
        if experts:
            self.history[-1]["moe"] = experts
        return total

    def full_parameters(self) -> dict:
        """name → value of every parameter of the one-rank model (a collective: call it on
        every rank): the strategy's parameters (ZeRO-3 gathers its shards over dp), then every
        pipeline stage's, then the tp slices joined by the split each parameter carries
        (padding dropped). What the equivalence tests compare with one rank after every step.
        The exchanges use the control channel (not logged, not timed)."""
        params = self.strategy.full_parameters()
        if self.grid is None or self.cfg["peft"] is not None:   # fine-tuning: a whole model, its own names
            return params
        if self.pipeline is not None:
            # why: each pipeline rank holds only its stages
            params = dict(pair for part in self.grid.pp.exchange_objects(params) for pair in part.items())
        if self.grid.ep.size > 1:
            # why: each ep rank holds only its experts
            params = dict(pair for part in self.grid.ep.exchange_objects(params) for pair in part.items())
        whole = one_rank_parameters(self.model_config)
        if self.grid.tp_size > 1:
            # why: each tp rank holds only its slices
            splits = {name: split_of(p) for name, p in whole.items()}
            params = gather_state_dict(self.grid.tp.exchange_objects(params), splits, self.model_config.vocab_size)
        return {name: params[name] for name in whole}

    def eval_model(self):
        """The model evaluation runs: this rank's, or under pipeline parallelism the whole model
        (evaluation is not pipelined here; a collective over ``grid.pp``)."""
        return self.pipeline.whole_model() if self.pipeline is not None else self.model

    def compute_loss(self, x, y, step: int, micro: int):
        """The loss of one micro-batch: the model's cross-entropy. A distillation student
        (:mod:`minidist.distill`) overrides this to add the teacher's soft targets."""
        return self.model(x, y)[1]

    # -- evaluation ---------------------------------------------------------------------------
    def evaluate(self) -> dict:
        """Validation loss (and exact-match accuracy for synthetic tasks): nothing of it is on the
        simulated device — its ops run off it, and its messages (the pipeline's whole model,
        ZeRO-3's gathers, tensor parallelism) are taken back out of the clock, trace and log."""
        with self.device.rolled_back(self.comm.log if self.comm is not None else None):
            return self._evaluate()

    def _evaluate(self) -> dict:
        model = self.eval_model()
        model.eval()
        out = {}
        with no_grad(), autocast(self.autocast_dtype), off_device():    # (a rank's thread keeps its device on)
            if isinstance(self.val_dataset, TextDataset):
                losses = [float(model(x, y)[1].data)
                          for x, y in self.val_dataset.eval_batches(self.micro_batch, self.cfg["eval_iters"])]
                out["val_loss"] = float(np.mean(losses))
                out["unigram_entropy"] = float(self.val_dataset.unigram_entropy())
            if hasattr(self.dataset, "exact_match"):
                out["exact_match"] = float(self.dataset.exact_match(
                    lambda prompt: greedy_decode(model, prompt, self.dataset.answer_len)))
                losses = [float(model(x, y)[1].data)
                          for x, y in self.dataset.eval_batches(self.micro_batch, self.cfg["eval_iters"])]
                out["val_loss"] = float(np.mean(losses))
        model.train()
        return out

    # -- the whole run ------------------------------------------------------------------------
    def fit(self, progress: bool = True, stream=None, on_step=None) -> dict:
        """Train from ``start_step`` (0, or where a loaded checkpoint stopped) to ``steps``;
        ``on_step(trainer, step)`` runs after each step (``--save``'s checkpoints)."""
        steps = self.cfg["steps"]
        t0 = time.perf_counter()
        with self._progress_bar(progress, stream) as bar:
            for step in range(self.start_step, steps):
                loss = self.train_step(step)
                self._check_finite(step, loss)
                if progress:
                    loss = self.global_loss(loss)        # a collective: every rank shows progress or none
                    bar.set_postfix_str(f"loss {loss:.4f}", refresh=False)
                    bar.update(1)
                interval = self.cfg["eval_interval"]
                if interval and (step + 1) % interval == 0 and step + 1 < steps:
                    self.history[-1].update(self.evaluate())
                if on_step is not None:
                    on_step(self, step)
        self.final = self.evaluate()
        self._check_finite(steps - 1, self.final.get("val_loss", 0.0), final=True)
        self._average_losses()
        self.wall_time = time.perf_counter() - t0
        return self.final

    def _progress_bar(self, progress: bool, stream=None) -> tqdm:
        """tqdm's bar on rank 0 (the others' is disabled): ``step n/N``, the global batch's loss
        as the report shows it, elapsed time and rate. Written to ``stream`` (stderr by default,
        so that stdout keeps only the report); in a log that is not a terminal it is still
        written, refreshed at most every few seconds (and once at the end). ``position=0``:
        in-process ranks are threads of one process, and a distillation run's teacher and student
        bars may overlap in time; tqdm would otherwise stack them with cursor movements, which a
        log shows as escape codes."""
        stream = stream or sys.stderr
        tty = hasattr(stream, "isatty") and stream.isatty()
        return tqdm(total=self.cfg["steps"], initial=self.start_step, file=stream, unit="step",
                    disable=not (progress and self.rank == 0), mininterval=0.1 if tty else 5.0,
                    dynamic_ncols=tty, leave=True, position=0,
                    bar_format="{percentage:3.0f}%|{bar:20}| step {n_fmt}/{total_fmt}{postfix} "
                               "[{elapsed}<{remaining}, {rate_fmt}]")

    def global_loss(self, loss: float) -> float:
        """This step's loss as the report shows it: the mean over the data-parallel replicas of
        what the rank holding it measured (tp rank 0 of the last pipeline stage). A collective
        on the control channel (not logged, not timed)."""
        if self.comm is None or self.comm.size == 1:
            return loss
        holds = (self.pipeline is None or self.pipeline.holds_loss) and \
            (self.grid is None or self.grid.coords["tp"] == 0)
        values = [v for v in self.comm.exchange_objects(loss if holds else None) if v is not None]
        return float(sum(values) / len(values))

    def _check_finite(self, step: int, loss: float, final: bool = False) -> None:
        """Stop a diverged run: in fp32/fp64 at the first non-finite loss (nothing would skip
        the step); in fp16/bf16, where overflowing steps are skipped (§7), only if the run
        ends on a non-finite loss."""
        if np.isfinite(loss) or (self.precision is not None and not final and step + 1 < self.cfg["steps"]):
            return
        what = "validation loss after the last step" if final else "loss"
        raise TrainingDivergedError(f"step {step}: the {what} is {loss} ({self.autocast_dtype or self.cfg['dtype']} "
                                    f"training); the run diverged: lower optimizer.params.lr (now "
                                    f"{self.optimizer.lr:g}) or set gradient_clipping")

    def _average_losses(self) -> None:
        """Each rank logged the loss of its slice; the job's loss is their mean (once, at the end,
        so that the per-step traffic is the strategy's alone)."""
        if self.comm is None or self.comm.size == 1 or not self.history:
            return
        if self.pipeline is not None:        # only the last chunk's rank knows the loss
            return self.pipeline.average_losses(self)
        local = np.array([h["loss"] for h in self.history], dtype=np.float64)
        # why: rank 0 reports the loss of the global batch, the mean of every rank's slice
        mean = dist.all_reduce(self.comm, local, op="mean", algorithm="ring")
        for h, v in zip(self.history, mean):
            h["rank_loss"], h["loss"] = h["loss"], float(v)
