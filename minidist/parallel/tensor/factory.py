"""Megatron's layer factory: the one GPT of :mod:`minidist.model`, built with parallel layers.

:class:`TensorParallelLayers` answers the model's requests (:class:`minidist.model.Layers`)
with this rank's shard of each layer, cut from the one-rank weights by the split the
parameter carries (:mod:`minidist.parallel.split`)::

    GPT(config, seed, layers=TensorParallelLayers(grid.tp, sequence_parallel=True))

Per block (Shoeybi et al. 2019, Figure 3), with the block's forward unchanged::

    x ─ ln_1 ─ f ─ c_attn (column: n_head/t heads' q, k, v) ─ attention ─ c_proj (row) ─ g ─ + x
    x ─ ln_2 ─ f ─ c_fc (column: 4h/t)  ─ GELU ─ c_proj (row) ─ g ─ + x

With ``sequence_parallel`` (Korthikanti et al. 2022) everything outside the two parallel
regions holds ``(B, T/t, C)``: ``f`` becomes an all-gather, ``g`` a reduce-scatter (``ḡ``).
Embedding: the vocabulary-parallel lookup is summed by ``g``, positions are added, and under
sequence parallelism this rank keeps its ``T/t`` positions. The LM head is tied to the
embedding shard: it produces this rank's ``V/t`` logits, and
:func:`~.cross_entropy.vocab_parallel_cross_entropy` never gathers them; without targets
(generation) the whole ``(B, T, V)`` logits are gathered, as Megatron's ``parallel_output=False``.
"""
from __future__ import annotations

import contextlib

from ... import functional as F
from ...layers import Layers
from ...nn import Dropout
from ..split import padded_vocab_size, shard
from .cross_entropy import vocab_parallel_cross_entropy
from .layers import (ColumnParallelLinear, RowParallelLinear, SequenceParallelLayerNorm, TensorParallelContext,
                     VocabParallelEmbedding, linear_with_sequence_parallel)
from .mappings import (copy_to_tensor_model_parallel_region, gather_from_sequence_parallel_region,
                       gather_from_tensor_model_parallel_region, scatter_to_sequence_parallel_region)
from .random import SlicedGenerator


class TensorParallelLayers(Layers):
    """The layers of one tensor-parallel rank (``group`` = ``grid.tp``)."""

    def __init__(self, group, sequence_parallel: bool = False, make_vocab_size_divisible_by: int = 1,
                 overlap_comm: bool = False, naive_sequence_parallel: bool = False):
        self.ctx = TensorParallelContext(group, sequence_parallel, overlap_comm, naive_sequence_parallel)
        self.divisible_by = make_vocab_size_divisible_by
        self._sp = sequence_parallel
        self.vocab_size = self.padded_vocab_size = self.vocab_start = None   # set by the token table

    size = property(lambda self: self.ctx.size)
    rank = property(lambda self: self.ctx.rank)
    sequence_parallel = property(lambda self: self._sp)      # as configured (a forward may turn it off)

    def shard(self, a, split):
        if a is None or split is None:
            return a
        if split.padded:                                     # the vocabulary: remember its layout
            self.vocab_size = a.shape[split.dim]
            self.padded_vocab_size = padded_vocab_size(self.vocab_size, self.size, self.divisible_by)
            self.vocab_start = self.rank * (self.padded_vocab_size // self.size)
        return shard(a, split, self.size, self.rank, self.divisible_by)

    def _column(self, weight, bias):
        return ColumnParallelLinear(weight, bias, self.ctx)

    def _row(self, weight, bias):
        return RowParallelLinear(weight, bias, self.ctx)

    def _vocab_embedding(self, weight):
        return VocabParallelEmbedding(weight, self.vocab_start, self.ctx)

    def _layer_norm(self, weight, bias):
        ln = SequenceParallelLayerNorm.from_arrays(weight, bias)
        ln.ctx = self.ctx
        return ln

    def dropout(self, p: float, seed: int, region: str = "tokens") -> Dropout:
        """The one-rank layer's dropout, sliced along axis 1 of its mask where this rank holds a
        slice: its heads inside attention, its positions under sequence parallelism (:mod:`.random`)."""
        d = Dropout(p, seed)
        if region == "heads" or self._sp:
            d.rng = SlicedGenerator(d.rng, axis=1, index=self.rank, parts=self.size)
        return d

    # -- regions -------------------------------------------------------------------------------
    @contextlib.contextmanager
    def sequence(self, T: int):
        """Generation feeds prompts of any length; one that does not divide by t runs without
        sequence parallelism (same weights, same result, no gradients)."""
        sp = self.ctx.sequence_parallel
        self.ctx.sequence_parallel = sp and T % self.size == 0
        try:
            yield
        finally:
            self.ctx.sequence_parallel = sp

    @contextlib.contextmanager
    def replicated_tokens(self):
        """Column- and row-parallel linears as without sequence parallelism (``f`` and ``g``): the
        MoE MLP gathers the sequence first and runs its experts on whole slot buffers."""
        sp = self.ctx.sequence_parallel
        self.ctx.sequence_parallel = False
        try:
            yield
        finally:
            self.ctx.sequence_parallel = sp

    def scatter_tokens(self, x):
        if self.ctx.sequence_parallel:
            return scatter_to_sequence_parallel_region(x, self.ctx.group)      # (B, T/t, C)
        return x

    def gather_tokens(self, x):
        if self.ctx.sequence_parallel:
            # why: a hidden state handed to a replicated loss (Patient KD) must hold every position
            return gather_from_sequence_parallel_region(x, self.ctx.group, tensor_parallel_output_grad=False)
        return x

    def lm_head(self, x, wte):
        head = wte.T                                          # tied head: (C, V_padded/t)
        if self.ctx.sequence_parallel:
            return linear_with_sequence_parallel(x, head, None, self.ctx.group)   # (B, T, V_padded/t)
        return F.matmul(copy_to_tensor_model_parallel_region(x, self.ctx.group), head)

    def cross_entropy(self, logits, targets):
        return vocab_parallel_cross_entropy(logits, targets, self.ctx.group, self.vocab_start, self.vocab_size,
                                            ignore_index=-1)

    def full_logits(self, logits):
        whole = gather_from_tensor_model_parallel_region(logits, self.ctx.group)   # (B, T, V_padded)
        return whole[:, :, :self.vocab_size]

