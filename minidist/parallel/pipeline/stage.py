"""The GPT cut into pipeline chunks (Megatron's "pipeline stages", torch's ``PipelineStage``).

With n chunks (``schedule.n_stages``) and L blocks, chunk s runs blocks ``s·L/n … (s+1)·L/n − 1``;
chunk 0 also runs the embeddings (``wte`` + ``wpe``, dropout), the last chunk ``ln_f``, the LM
head and the loss. The head is tied to ``wte`` (GPT-2): when the first and last chunks sit on
different ranks, the last rank keeps its own copy of ``wte`` and the two copies' gradients are
summed after the flush (:mod:`.engine`), as Megatron-LM does with its "embedding group".

Every rank builds the whole GPT from the seed (so every chunk starts from the one-rank
model's weights) and then gives back, with ``Parameter.unplace``, the memory of everything it
does not hold. :class:`StageModule` lists the parameters it keeps under their full nanoGPT
names, so optimizers, DDP and ZeRO work on it as on a whole model.
"""
from __future__ import annotations

import numpy as np

from ... import functional as F
from ...nn import Module


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

    def __init__(self, model, stage: int, n_stages: int, layers: list):
        self.model, self.stage, self.layers = model, stage, layers
        self.first, self.last = stage == 0, stage == n_stages - 1
        tr = model.transformer
        self.blocks = [tr.h[i] for i in layers]
        self.params = [p for b in self.blocks for p in b.parameters()]
        if self.first:
            self.params += [tr.wte.weight, tr.wpe.weight]
        if self.last:
            self.params += [tr.ln_f.weight] + ([tr.ln_f.bias] if tr.ln_f.bias is not None else [])
            if tr.wte.weight not in self.params:
                self.params.append(tr.wte.weight)         # the tied LM head

    def forward(self, x, targets=None):
        """Chunk 0 takes token ids (B, T); the others the activation (B, T, C). The last chunk
        returns the loss, the others their output activation (B, T, C)."""
        tr = self.model.transformer
        if self.first:
            B, T = x.shape
            x = tr.drop(tr.wte(x) + tr.wpe(np.arange(T)))            # (B, T, C)
        for block in self.blocks:
            x = block(x)
        if not self.last:
            return x
        B, T, _ = x.shape
        logits = F.matmul(tr.ln_f(x), tr.wte.weight.T)              # tied head: (B, T, V)
        return F.cross_entropy(logits.reshape(B * T, -1), np.asarray(targets).reshape(-1), ignore_index=-1)


class StageModule(Module):
    """The parameters one rank holds, under their names in the whole model."""

    def __init__(self, model, params):
        super().__init__()
        keep = {id(p) for p in params}
        object.__setattr__(self, "_full", model)
        object.__setattr__(self, "_keep", keep)
        object.__setattr__(self, "config", model.config)

    def _named_parameters_all(self, prefix):
        for name, p in self._full._named_parameters_all(prefix):
            if id(p) in self._keep:
                yield name, p

    def modules(self):
        return self._full.modules()


def build_stage(model, schedule, rank: int) -> tuple:
    """This rank's chunks (stage → :class:`Chunk`) and its :class:`StageModule`; frees the
    device memory of every parameter the rank does not hold."""
    layers = split_layers(model.config.n_layer, schedule.n_stages)
    chunks = {s: Chunk(model, s, schedule.n_stages, layers[s]) for s in schedule.stages_of(rank)}
    held = {id(p): p for c in chunks.values() for p in c.params}
    for p in model.parameters():
        if id(p) not in held:
            p.unplace()                                  # another rank holds it
    return chunks, StageModule(model, list(held.values()))
