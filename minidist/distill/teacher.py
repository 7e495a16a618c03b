"""The frozen teacher: a trained GPT that only runs forward.

What freezing means for memory: the teacher holds its **parameters only** — no
gradients (``requires_grad`` is off and it runs under ``no_grad``, so not even activations
are saved for a backward), no optimizer states (its optimizer is dropped after training).
In an fp16/bf16 run the teacher is kept in that 16-bit format (2 bytes per parameter, as
DeepSpeed and Megatron keep a frozen teacher in the training precision) and runs under
autocast; there are no fp32 master weights because nothing is ever updated.

Its parameters are charged to the device under "parameters" with names starting with
``teacher.``, so :meth:`FrozenTeacher.memory` can report the teacher apart from the student
that may share the rank.
"""
from __future__ import annotations

import contextvars
import copy

import numpy as np

from ..checkpoint import CheckpointError, full_state_dict, read_checkpoint
from ..memory import CATEGORIES
from ..model import GPT
from ..numerics import quantize
from ..precision import autocast
from ..tensor import no_grad
from ..training.config import ConfigError
from ..training.config_distillation import check_teacher, teacher_config  # noqa: F401 (re-exported)

PREFIX = "teacher."
LOAD_KEY = "distillation.teacher.load"
WTE = "transformer.wte.weight"          # the token embedding: its rows are the teacher's vocabulary


class FrozenTeacher:
    """Wraps a trained :class:`~minidist.model.GPT`: frozen, in eval mode, placed on ``device``.

    ``precision``: None (the model's dtype) or "fp16"/"bf16": parameters rounded to and
    counted in that format, forward under autocast."""

    def __init__(self, model, device, precision: str | None = None):
        self.model = model.eval()
        self.device = device
        self.precision = precision
        self.config = model.config
        self.n_params = model.num_parameters()
        for name, p in model.named_parameters():
            p.grad = None
            p.unplace()                                       # off the device it was trained on
            p.requires_grad = False
            if precision is not None:
                p.data[...] = quantize(p.data, precision)
                p.dtype_tag = precision
            p.name = PREFIX + name
            p.place(device)                                   # charged as parameters, nothing else

    def forward(self, idx, blocks=()):
        """Logits (B, T, V) as an array and ``{block: hidden (B, T, C)}`` for the 1-based
        teacher ``blocks`` Patient KD needs. FLOPs are charged to the device; nothing is saved."""
        with self.device, no_grad(), autocast(self.precision):
            if blocks:
                logits, _, hidden = self.model(idx, return_hidden=True)
                return logits.data, {j: hidden[j - 1].data for j in blocks}
            logits, _ = self.model(idx)
            return logits.data, {}

    def memory(self) -> dict:
        """Bytes the teacher holds on its device, by category (all but "parameters" are 0)."""
        out = dict.fromkeys(CATEGORIES, 0)
        for category, nbytes, name in self.device.memory.live():
            if name.startswith(PREFIX):
                out[category] += nbytes
        return out

    def bytes_per_parameter(self) -> float:
        return self.memory()["parameters"] / self.n_params

    def holds_no_state(self) -> bool:
        """True when no teacher parameter has a gradient or requires one."""
        return all(p.grad is None and not p.requires_grad for p in self.model.parameters())


def run_precision(cfg: dict) -> str | None:
    """The run's 16-bit format ("fp16" / "bf16"), or None for full-precision training."""
    return "fp16" if cfg["fp16"]["enabled"] else ("bf16" if cfg["bf16"]["enabled"] else None)


def one_rank_config(cfg: dict) -> dict:
    """``cfg`` laid out on one rank (no tensor or pipeline split, no ZeRO): where a frozen
    teacher read from a checkpoint is built, whole, on every rank that needs it."""
    out = copy.deepcopy(cfg)
    out["parallel"].update(tensor=1, pipeline=1, sequence_parallel=False, tp_comm_overlap=False)
    out["zero_optimization"]["stage"] = 0
    out["zero_optimization"]["offload_optimizer"]["device"] = "none"
    return out


def whole_model(run):
    """The trained teacher as one whole model: ``run.model`` itself when this rank holds all
    of it (data parallel, ZeRO-1/2), else a GPT built off the device from
    :meth:`~minidist.training.Trainer.full_parameters` — a collective of the teacher's ranks
    (tensor slices joined, pipeline stages gathered, ZeRO-3 shards all-gathered). The frozen
    teacher is then whole on every rank: its forward needs no message, and the student's
    last pipeline stage, or each tensor-parallel rank, has every logit of it."""
    cfg = run.cfg
    par = cfg["parallel"]
    if par["tensor"] == 1 and par["pipeline"] == 1 and cfg["zero_optimization"]["stage"] < 3:
        return run.model
    params = run.full_parameters()
    model = contextvars.Context().run(lambda: GPT(run.model_config, seed=cfg["seed"], dtype=np.dtype(cfg["dtype"])))
    model.load_state_dict(params)
    return model


def wire_dtype(precision: str | None, model_dtype) -> str:
    """The element type teacher outputs travel in: the run's 16-bit format, else the model's dtype."""
    return precision or np.dtype(model_dtype).name


def read_teacher(cfg: dict):
    """Read the teacher that ``distillation.teacher.load`` names with minidist.checkpoint's own
    reader (any layout: every shard verified and assembled, then consolidated to full
    precision as ``zero_to_fp32`` does) and check it against the student
    (:func:`~minidist.training.config_distillation.check_teacher`). Returns ``(d, ckpt, state)``: a copy
    of the ``distillation`` section whose ``teacher.model`` is the manifest's and whose
    ``teacher.steps`` is the checkpoint's step, the :class:`~minidist.checkpoint.Checkpoint`,
    and the full state dict. Every problem is a :class:`ConfigError` naming
    ``distillation.teacher.load``: run it on every rank before any message is sent."""
    d = cfg["distillation"]
    try:
        ckpt = read_checkpoint(d["teacher"]["load"])
    except CheckpointError as e:
        raise ConfigError(LOAD_KEY, f"{e}") from None
    state = full_state_dict(ckpt.universal)
    if WTE not in state:
        raise ConfigError(LOAD_KEY, f"{ckpt.step_dir} holds no {WTE}: it is not a checkpoint of minidist's GPT; "
                                    f"give a folder written by python -m minidist.train --save")
    model = dict(ckpt.manifest["config"]["model"], vocab_size=int(state[WTE].shape[0]))   # None: the dataset's
    d = dict(d, teacher=dict(d["teacher"], model=model, steps=ckpt.step))
    check_teacher(cfg, d)
    return d, ckpt, state
