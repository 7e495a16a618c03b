"""The layer factory and the split attributes: how the one GPT is built for any layout.

The GPT of :mod:`minidist.model` asks a factory for every layer that tensor parallelism
changes (Megatron-LM's layer specs; picotron builds its layers the same way). :class:`Layers`
is the plain factory — tensor-parallel degree 1, the ordinary ``Linear``, ``LayerNorm`` and
``Embedding`` — and :class:`minidist.parallel.tensor.TensorParallelLayers` is Megatron's,
which overrides the underscored builders and the region hooks below and keeps everything else.

How each parameter is split is written here, once, as attributes of the parameter
(``partition_dim``, ``partition_stride``, ``partition_padded``, ``sequence_parallel``, ``shared``;
Megatron's ``set_tensor_model_parallel_attributes``), on the one-rank model too: tensor
parallelism, checkpoints, clipping and ZeRO read them (:func:`split_of`), never a parameter's name.
"""
from __future__ import annotations

import contextlib
import dataclasses

import numpy as np

from . import functional as F
from .moe import MoEMLP
from .nn import Dropout, Embedding, LayerNorm, Linear, Module
from .tensor import Parameter


@dataclasses.dataclass(frozen=True)
class Split:
    """A tensor-parallel cut: axis ``dim`` is split into ``stride`` equal parts and each part
    into t blocks, rank r keeping block r of every part (Megatron's ``partition_dim`` and
    ``partition_stride``); ``padded``: the axis is first padded with zeros to a multiple of
    the ranks (the vocabulary)."""

    dim: int
    stride: int = 1
    padded: bool = False


def mark(p: Parameter | None, split: Split | None = None, **flags) -> None:
    """Write a split (and flags such as ``sequence_parallel``) onto a parameter."""
    if p is None:
        return
    if split is not None:
        p.partition_dim, p.partition_stride, p.partition_padded = split.dim, split.stride, split.padded
    for name, value in flags.items():
        setattr(p, name, value)


def split_of(p: Parameter) -> Split | None:
    """The parameter's tensor-parallel split, or None when every tp rank holds all of it."""
    if p.partition_dim is None:
        return None
    return Split(p.partition_dim, p.partition_stride, p.partition_padded)


def parameter_splits(model: Module) -> dict:
    """name → :class:`Split` (or None) for every parameter of ``model``."""
    return {name: split_of(p) for name, p in model.named_parameters()}


class Layers:
    """The plain layer factory (tensor-parallel degree 1). The model asks it for every layer
    that tensor parallelism changes; the tensor-parallel factory overrides the underscored
    builders and the region hooks and keeps the splits, which are written here once:

    =====================  =================================  ==============================
    layer                  split of weight / bias             under tensor parallelism
    =====================  =================================  ==============================
    ``column_linear``      columns (dim 1) / dim 0, by parts  ColumnParallelLinear, ``f``
    ``row_linear``         rows (dim 0) / replicated          RowParallelLinear, ``g``
    ``vocab_embedding``    vocabulary rows (dim 0), padded    VocabParallelEmbedding, ``g``
    ``layer_norm``         replicated                         summed over tp under SP
    =====================  =================================  ==============================
    """

    size = 1                      # tensor-parallel degree
    rank = 0
    sequence_parallel = False
    divisible_by = 1
    padded_vocab_size = None      # the tensor-parallel factory pads the vocabulary
    expert_parallel = None        # minidist.parallel.expert's dispatcher over the ep ranks, when ep > 1

    # -- layers ------------------------------------------------------------------------------
    def column_linear(self, weight, bias, stride: int = 1) -> Module:
        """``y = x @ W + b`` with the output features split: ``stride`` parts (q | k | v)."""
        ws, bs = Split(1, stride), Split(0, stride)
        m = self._column(self.shard(weight, ws), self.shard(bias, bs))
        mark(m.weight, ws)
        mark(m.bias, bs)
        return m

    def row_linear(self, weight, bias) -> Module:
        """``y = x @ W + b`` with the input features split; the bias is added once, after the sum."""
        ws = Split(0)
        m = self._row(self.shard(weight, ws), bias)
        mark(m.weight, ws)
        mark(m.bias, sequence_parallel=self.sequence_parallel)
        return m

    def vocab_embedding(self, weight) -> Module:
        """The token table, split by vocabulary rows (padded to a multiple of the ranks)."""
        s = Split(0, 1, padded=True)
        m = self._vocab_embedding(self.shard(weight, s))
        mark(m.weight, s)
        return m

    def layer_norm(self, weight, bias) -> Module:
        m = self._layer_norm(weight, bias)
        mark(m.weight, sequence_parallel=self.sequence_parallel)
        mark(m.bias, sequence_parallel=self.sequence_parallel)
        return m

    def embedding(self, weight) -> Module:
        """A replicated table (the positions)."""
        return Embedding.from_arrays(weight)

    def moe_mlp(self, config, layer_id: int, init, prefix: str, seed: int, proj_std: float) -> Module | None:
        """Block ``layer_id``'s MLP as a mixture of experts (:class:`minidist.moe.MoEMLP`, its experts
        built with this factory's linears), or None where the block keeps the dense MLP."""
        moe = config.moe
        if moe is None or not moe.is_moe_layer(layer_id):
            return None
        return MoEMLP(moe, config.n_embd, config.bias, self, init, prefix, config.dropout, seed, proj_std)

    def dropout(self, p: float, seed: int, region: str = "tokens") -> Dropout:
        """``region``: "heads" (attention probabilities) or "tokens" (the residual stream)."""
        return Dropout(p, seed)

    # -- regions: what the forward does between layers ---------------------------------------
    def sequence(self, T: int):
        """Context of one forward over ``T`` positions (tensor parallelism decides there
        whether ``T`` splits over the ranks)."""
        return contextlib.nullcontext()

    def scatter_tokens(self, x):
        """Enter the blocks' residual stream: (B, T, C) → this rank's positions."""
        return x

    def gather_tokens(self, x):
        """A block's output as (B, T, C) on every rank (``return_hidden``, the MoE MLP under SP)."""
        return x

    def replicated_tokens(self):
        """Context in which the layers see every position on every tensor-parallel rank (the MoE
        MLP routes the whole sequence under sequence parallelism): plain, nothing changes."""
        return contextlib.nullcontext()

    def context_tokens(self, ids, start: int = 0):
        """The token ids (B, T) this rank embeds and their positions (``start`` … ``start + T − 1``);
        context parallelism keeps its chunks of the sequence (:mod:`minidist.parallel.context`)."""
        return ids, np.arange(start, start + ids.shape[1])

    def attention(self, q, k, v, is_causal: bool = True, dropout_p: float = 0.0, rng=None):
        """The attention core softmax(QKᵀ/√d)·V on (B, nh, T, hs); context parallelism runs ring
        attention or Ulysses over its ranks instead."""
        return F.scaled_dot_product_attention(q, k, v, is_causal=is_causal, dropout_p=dropout_p, rng=rng)

    def lm_head(self, x, wte: Parameter):
        """The tied head: (B, T, C) → logits (B, T, V)."""
        return F.matmul(x, wte.T)

    def cross_entropy(self, logits, targets):
        """Mean cross-entropy over the target positions (ignore_index −1)."""
        B, T, _ = logits.shape
        return F.cross_entropy(logits.reshape(B * T, -1), np.asarray(targets).reshape(-1), ignore_index=-1)

    def full_logits(self, logits):
        """Every column of the logits (generation)."""
        return logits

    # -- builders the tensor-parallel factory replaces ----------------------------------------
    def shard(self, a, split: Split):
        return a

    def _column(self, weight, bias) -> Module:
        return Linear.from_arrays(weight, bias)

    def _row(self, weight, bias) -> Module:
        return Linear.from_arrays(weight, bias)

    def _vocab_embedding(self, weight) -> Module:
        return Embedding.from_arrays(weight)

    def _layer_norm(self, weight, bias) -> Module:
        return LayerNorm.from_arrays(weight, bias)
