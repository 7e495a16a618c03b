"""The student: the ordinary :class:`~minidist.training.Trainer` whose loss asks the teacher.

Its micro-batch loss is α·T²·KL + (1−α)·CE (+ β·PKD) (:mod:`.losses`) instead of
cross-entropy, the teacher's side coming from a *source* (:mod:`.streaming`): the frozen
teacher on this rank, or a teacher rank. Every layout the Trainer builds trains the student:

* **data parallel / ZeRO-1/2/3** — each rank distils its slice of the global batch;
* **tensor parallelism** (and sequence parallelism) — the model is called without targets, so
  its head gathers the vocabulary slices into the whole logits with a differentiable
  all-gather (Megatron's ``gather_from_tensor_model_parallel_region``, whose backward keeps
  this rank's slice of the gradient); the KD loss, which needs the whole distribution, is then
  the one-rank loss on every tp rank. Patient KD's hidden states are gathered over the
  sequence under SP (:meth:`~minidist.layers.Layers.gather_tokens`);
* **pipeline parallelism** — the loss lives on the last stage: its chunk computes the logits
  and the KD loss there, the frozen teacher (whole on every rank) giving that micro-batch's
  soft targets (:meth:`StudentTrainer.attach_pipeline`). Patient KD is refused with a pipeline
  (:mod:`minidist.training.config_distillation`): its hidden-state losses belong to the stages
  that hold the matched blocks, which this engine does not inject.
"""
from __future__ import annotations

import numpy as np

from .. import distributed as dist
from ..training.trainer import Trainer
from .losses import kd_loss, pkd_loss, pkd_pairs

PARTS = ("kl", "ce", "pkd")


class _Targets:
    """What the last pipeline chunk needs for a micro-batch's loss: the labels and the tokens
    (the teacher's input)."""

    def __init__(self, y, x):
        self.y, self.x = y, x


class StudentTrainer(Trainer):
    """The student: a Trainer whose micro-batch loss is α·T²·KL + (1−α)·CE (+ β·PKD)."""

    def __init__(self, config, comm, device, distillation: dict):
        super().__init__(config, comm, device)
        self.d = distillation
        self.source = None                                       # set by distill_rank
        p = distillation["patient"]
        self.pairs = pkd_pairs(self.model_config.n_layer, distillation["teacher"]["model"]["n_layer"],
                               p["mapping"]) if p else []
        if self.pipeline is not None:
            self.attach_pipeline()

    def compute_loss(self, x, y, step, micro):
        payload = self.source.payload(x)
        if self.d["patient"]:
            logits, _, hidden = self.model(x, return_hidden=True)
        else:
            (logits, _), hidden = self.model(x), None
        return self.distil_loss(logits, hidden, payload, y)

    def distil_loss(self, logits, hidden, payload, y):
        """α·T²·KL + (1−α)·CE of the whole ``logits`` (B, T, V) against the teacher's
        ``payload``, + β·PKD of the ``hidden`` block outputs; the parts go to the history."""
        d, p = self.d, self.d["patient"]
        loss, parts = kd_loss(logits, payload.soft, y, d["temperature"], d["alpha"], return_parts=True)
        if p:
            pkd = pkd_loss(hidden, payload.hidden, p["mapping"], teacher_layers=d["teacher"]["model"]["n_layer"])
            loss = loss + pkd * p["beta"]
            parts["pkd"] = float(pkd.data)
        for k in PARTS:
            self._parts[k] += parts.get(k, 0.0) / self.accumulation
        return loss

    # -- under pipeline parallelism ------------------------------------------------------------
    def attach_pipeline(self) -> None:
        """The last chunk's loss becomes the distillation loss: the engine hands it the
        :class:`_Targets` of :meth:`batch` (labels and tokens) in place of the labels."""
        for chunk in self.pipeline.chunks.values():
            if chunk.last:
                chunk.forward = self._last_chunk_forward(chunk)

    def _last_chunk_forward(self, chunk):
        def forward(x, targets):
            payload = self.source.payload(targets.x)             # the teacher's view of this micro-batch
            model = chunk.model
            if chunk.first:
                x = model.embed(x)
            x = model.blocks(x, chunk.layer_ids)
            logits, _ = model.head(x)                            # no targets: the whole vocabulary's logits
            return self.distil_loss(logits, None, payload, targets.y)
        return forward

    def batch(self, step: int, micro: int):
        x, y = super().batch(step, micro)
        return (x, _Targets(y, x)) if self.pipeline is not None else (x, y)

    # -- the loss parts ------------------------------------------------------------------------
    def train_step(self, step):
        self._parts = dict.fromkeys(PARTS, 0.0)
        loss = super().train_step(step)
        self.history[-1].update(self._parts)
        return loss

    def _average_losses(self):
        super()._average_losses()
        if self.comm is None or self.comm.size == 1 or not self.history:
            return
        local = np.array([[h[k] for k in PARTS] for h in self.history], dtype=np.float64)
        if self.pipeline is None:
            # why: the report shows the global batch's loss parts, the mean of every student's slice
            mean = dist.all_reduce(self.comm, local, op="mean", algorithm="ring")
        else:
            # why: only tp rank 0 of each replica's last stage counts its parts (the others hold none or copies)
            counts = self.pipeline.holds_loss and self.grid.coords["tp"] == 0
            mean = dist.all_reduce(self.comm, local * counts, op="sum", algorithm="ring") / self.grid.dp_size
        for h, row in zip(self.history, mean):
            h.update(dict(zip(PARTS, map(float, row))))
