"""The GPT cut into pipeline chunks (Megatron's "pipeline stages", torch's ``PipelineStage``).

With n chunks (``schedule.n_stages``) and L blocks, chunk s runs blocks ``s·L/n … (s+1)·L/n − 1``;
chunk 0 also runs the embeddings (``wte`` + ``wpe``, dropout), the last chunk ``ln_f``, the LM
head and the loss. The head is tied to ``wte`` (GPT-2): when the first and last chunks sit on
different ranks, the last rank keeps its own copy of ``wte`` (marked ``shared``) and the two
copies' gradients are summed after the flush (:mod:`.engine`), as Megatron-LM does with its
"embedding group".

A rank builds one GPT (:mod:`minidist.model`) holding exactly its chunks' blocks, under their
names in the whole model (``transformer.h.4``), with ``pre_process`` if it holds chunk 0 and
``post_process`` if it holds the last — Megatron's names — and the layer factory of the run
(its tensor-parallel shards under 3D). Its values are the one-rank model's. A :class:`Chunk`
runs the model's own three steps (``embed → blocks → head``) on its part: there is no second
copy of the forward here. A chunk's MoE layers' aux and z losses (:meth:`Chunk.moe_loss`) join
the step's loss where they are computed: on the last chunk added to its loss, on the others
carried by the backward of the chunk's output (:func:`carry_loss`); so does a chunk's
``side_loss`` (Patient KD's hidden-state loss of the student's blocks there).
"""
from __future__ import annotations

import numpy as np

from ...model import GPT
from ...moe import statistics
from ...tensor import make_result


def split_layers(n_layer: int, n_chunks: int) -> list:
    """Block indices of every chunk: an even split, or a clear error."""
    if n_layer % n_chunks:
        raise ValueError(f"model.n_layer ({n_layer}) does not split evenly into {n_chunks} pipeline chunks "
                         f"(pipeline ranks × chunks per rank); use n_layer a multiple of {n_chunks} "
                         f"or change parallel.pipeline / parallel.virtual_stages / parallel.schedule")
    per = n_layer // n_chunks
    return [list(range(s * per, (s + 1) * per)) for s in range(n_chunks)]


class Chunk:
    """One model chunk: what F runs and what B differentiates."""

    def __init__(self, model: GPT, stage: int, n_stages: int, layer_ids: list):
        self.model, self.stage, self.layer_ids = model, stage, layer_ids
        self.first, self.last = stage == 0, stage == n_stages - 1
        self.side_loss = None           # a scalar loss a forward left beside its output (minidist.distill)

    def forward(self, x, targets=None):
        """Chunk 0 takes token ids (B, T); the others the activation (B, T, C) — (B, T/t, C)
        under sequence parallelism. The last chunk returns the loss, the others their output."""
        if self.first:
            x = self.model.embed(x)
        x = self.model.blocks(x, self.layer_ids)
        if not self.last:
            return x
        return self.model.head(x, targets)[1]

    def moe_loss(self):
        """The aux and z losses (:mod:`minidist.moe`) this chunk's MoE layers computed in its last
        forward, summed (a Tensor), or None when the chunk has no MoE layer and no side loss.
        A ``side_loss`` its last forward left (Patient KD's hidden-state loss of the chunk's
        blocks, :mod:`minidist.distill.student`) joins them, taken once: the same injection."""
        blocks = self.model.transformer.h
        parts = [blocks[i].mlp.loss for i in self.layer_ids if getattr(blocks[i].mlp, "loss", None) is not None]
        if self.side_loss is not None:
            parts.append(self.side_loss)
            self.side_loss = None
        return sum(parts[1:], parts[0]) if parts else None

    def moe_statistics(self, into: dict) -> dict:
        """Add the load per expert and the drops of this chunk's MoE layers' last forward to
        ``into`` (layer id → ``{"load": list, "dropped": int}``, the trainer's history format)."""
        for i, s in statistics(self.model).items():
            if i in self.layer_ids:
                acc = into.setdefault(i, {"load": [0] * len(s["load"]), "dropped": 0})
                acc["load"] = [int(a + b) for a, b in zip(acc["load"], s["load"])]
                acc["dropped"] += s["dropped"]
        return into


def carry_loss(x, loss):
    """``x`` unchanged, with ``loss`` (a scalar Tensor, already scaled as the step's loss is)
    hanging on its backward: when the gradient of ``x`` comes back from the next chunk, the
    loss's backward starts too, with gradient 1 (Megatron's ``MoEAuxLossAutoScaler``). So a
    chunk's MoE aux and z losses join the step's loss without travelling to the last chunk."""
    def backward(g, needs):
        return g, np.ones_like(loss.data)
    return make_result(x.data, (x, loss), backward, "carry_loss")


def build_stage(config, schedule, rank: int, seed: int = 0, dtype=None, layers=None) -> tuple:
    """This rank's chunks (stage → :class:`Chunk`) and the GPT holding them (built inside
    ``with device:``, it charges only what the rank holds)."""
    n = schedule.n_stages
    layer_lists = split_layers(config.n_layer, n)
    mine = schedule.stages_of(rank)
    ids = sorted(i for s in mine for i in layer_lists[s])
    kwargs = {} if dtype is None else {"dtype": dtype}
    model = GPT(config, seed=seed, layers=layers, layer_ids=ids, pre_process=0 in mine,
                post_process=n - 1 in mine, **kwargs)
    return {s: Chunk(model, s, n, layer_lists[s]) for s in mine}, model
