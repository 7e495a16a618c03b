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
  soft targets (:meth:`StudentTrainer.attach_pipeline`). Patient KD's hidden-state loss is
  added where the matched student blocks are: each chunk holding some computes their share of
  it, Σ over its pairs of ‖u_s − u_t‖² / (P·N) (P pairs in all, N positions: the shares sum to
  the one-rank loss), against the teacher's hidden states computed on its own rank, and leaves
  it as the chunk's ``side_loss``; the executor injects it into the backward of the chunk's
  output exactly as it does a MoE layer's aux loss (Megatron's ``MoEAuxLossAutoScaler``,
  :func:`~minidist.parallel.pipeline.stage.carry_loss`), or adds it to the last chunk's loss.
"""
from __future__ import annotations

import numpy as np

from .. import distributed as dist
from ..parallel.pipeline.schedule import OverlapFB
from ..training.trainer import Trainer
from .losses import hidden_distance, kd_loss, pkd_loss, pkd_pairs

PARTS = ("kl", "ce", "pkd")


class _Targets:
    """What the last pipeline chunk needs for a micro-batch's loss: the labels and which
    micro-batch of the step it is (the teacher's payload is that micro-batch's)."""

    def __init__(self, y, micro: int):
        self.y, self.micro = y, micro


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
        ``payload``, + β·PKD of the ``hidden`` block outputs (None under a pipeline: its chunks
        add their shares); the parts go to the history."""
        d, p = self.d, self.d["patient"]
        loss, parts = kd_loss(logits, payload.soft, y, d["temperature"], d["alpha"], return_parts=True)
        if p and hidden is not None:
            pkd = pkd_loss(hidden, payload.hidden, p["mapping"], teacher_layers=d["teacher"]["model"]["n_layer"])
            loss = loss + pkd * p["beta"]
            parts["pkd"] = float(pkd.data)
        for k in PARTS:
            self._parts[k] += parts.get(k, 0.0) / self.accumulation
        return loss

    # -- under pipeline parallelism ------------------------------------------------------------
    def attach_pipeline(self) -> None:
        """The last chunk's loss becomes the distillation loss (the engine hands it the
        :class:`_Targets` of :meth:`batch` in place of the labels), and every chunk holding a
        block Patient KD matches leaves that block's hidden-state loss as its ``side_loss``."""
        self._xs, self._payloads, self._queue = {}, {}, {}
        for chunk in self.pipeline.chunks.values():
            mine = [(i, j) for i, j in self.pairs if i - 1 in chunk.layer_ids]   # (student, teacher) 1-based
            if chunk.last or mine:
                chunk.forward = self._chunk_forward(chunk, mine)

    def _forward_order(self) -> dict:
        """Chunk → the micro-batches its forwards take, in the order this rank runs them: the
        executor walks the rank's program in order (an overlapped pair's forward included)."""
        order: dict = {}
        p = self.pipeline
        for a in p.schedule.program(p.pp_rank, p.executor.overlap):
            a = a.forward if isinstance(a, OverlapFB) else a
            if a.op == "F":
                order.setdefault(a.stage, []).append(a.micro_batch)
        return order

    def _payload(self, micro: int):
        """The teacher's outputs for micro-batch ``micro`` of the step, once per rank: taken in
        micro-batch order (a teacher rank sends them so), every one this rank's chunks need."""
        while len(self._payloads) <= micro:
            i = len(self._payloads)
            self._payloads[i] = self.source.payload(self._xs[i])
        return self._payloads[micro]

    def _chunk_forward(self, chunk, mine):
        p, n_pairs = self.d["patient"], len(self.pairs)

        def forward(x, targets=None):
            micro = targets.micro if chunk.last else self._queue[chunk.stage].pop(0)
            payload = self._payload(micro)                       # the teacher's view of this micro-batch
            model = chunk.model
            if chunk.first:
                x = model.embed(x)
            hidden = [] if mine else None
            x = model.blocks(x, chunk.layer_ids, hidden=hidden)
            if mine:
                hs = [hidden[chunk.layer_ids.index(i - 1)] for i, _ in mine]
                share = hidden_distance(hs, [payload.hidden[j] for _, j in mine]) * \
                    np.asarray(len(mine) / n_pairs, dtype=x.data.dtype)        # this chunk's part of the PKD loss
                chunk.side_loss = share * np.asarray(p["beta"], dtype=x.data.dtype)
                self._parts["pkd"] += float(share.data) / self.accumulation
            if not chunk.last:
                return x
            logits, _ = model.head(x)                            # no targets: the whole vocabulary's logits
            return self.distil_loss(logits, None, payload, targets.y)
        return forward

    def batch(self, step: int, micro: int):
        x, y = super().batch(step, micro)
        if self.pipeline is None:
            return x, y
        self._xs[micro] = x                                      # the engine asks for every micro-batch first
        return x, _Targets(y, micro)

    # -- the loss parts ------------------------------------------------------------------------
    def train_step(self, step):
        self._parts = dict.fromkeys(PARTS, 0.0)
        if self.pipeline is not None:
            self._xs, self._payloads, self._queue = {}, {}, self._forward_order()
        loss = super().train_step(step)
        if self.pipeline is not None:
            self._payloads.clear()
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
            # why: tp rank 0 of each replica's stages counts its parts (the last stage's KL and CE, every
            # stage its share of the PKD loss; the other tp ranks hold copies)
            counts = self.grid.coords["tp"] == 0
            mean = dist.all_reduce(self.comm, local * counts, op="sum", algorithm="ring") / self.grid.dp_size
        for h, row in zip(self.history, mean):
            h.update(dict(zip(PARTS, map(float, row))))
