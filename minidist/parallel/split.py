"""Cutting the one-rank arrays by the split each parameter carries, and joining them back.

How a parameter is split is an attribute of the parameter (``partition_dim``,
``partition_stride``, ``partition_padded``; :func:`minidist.model.split_of` reads them as a
:class:`~minidist.model.Split`), written once by the model's layer factory. Everything that
needs a rank's slice of a full array — the tensor-parallel layers, checkpoint resharding,
the equivalence tests — cuts it here; nothing looks at parameter names.

* ``dim`` is split into ``stride`` equal parts, and each part into t blocks; rank r keeps
  block r of every part. c_attn's columns are ``[q | k | v]`` (stride 3): each rank keeps the
  same heads of all three (Megatron's ``partition_stride``).
* ``padded``: the axis is first padded with zero rows to a multiple of ``divisible_by · t``
  (Megatron's ``make_vocab_size_divisible_by``); joining drops the padding.

Also here, because it reads the same attributes: which parameters a rank leaves out of the
global gradient norm.
"""
from __future__ import annotations

import numpy as np

from .. import distributed as dist
from ..layers import Split, split_of


def padded_vocab_size(vocab_size: int, tp: int, divisible_by: int = 1) -> int:
    """Megatron's ``_vocab_size_with_padding``: round V up to a multiple of ``divisible_by·tp``."""
    multiple = divisible_by * tp
    return -(-vocab_size // multiple) * multiple


def shard(a: np.ndarray, split: Split | None, tp: int, rank: int, divisible_by: int = 1) -> np.ndarray:
    """Rank ``rank``'s slice of the full array ``a`` (a copy); the whole array when ``split`` is None."""
    if split is None:
        return np.array(a)
    if split.padded:
        pad = padded_vocab_size(a.shape[split.dim], tp, divisible_by) - a.shape[split.dim]
        widths = [(0, pad if d == split.dim else 0) for d in range(a.ndim)]
        a = np.pad(a, widths)                                         # zero rows: (V_padded, C)
    parts = [np.split(part, tp, axis=split.dim)[rank] for part in np.split(a, split.stride, axis=split.dim)]
    return np.ascontiguousarray(np.concatenate(parts, axis=split.dim))


def unshard(pieces: list, split: Split | None, full_len: int | None = None) -> np.ndarray:
    """The full array from every tp rank's slice (in tp-rank order); ``full_len``: the
    unpadded length of a padded axis."""
    if split is None:
        return np.array(pieces[0])
    per_rank = [np.split(p, split.stride, axis=split.dim) for p in pieces]
    out = np.concatenate([np.concatenate([p[g] for p in per_rank], axis=split.dim)
                          for g in range(split.stride)], axis=split.dim)
    if split.padded and full_len is not None:
        out = np.take(out, np.arange(full_len), axis=split.dim)      # drop the padding
    return out


def shard_state_dict(state: dict, splits: dict, tp: int, rank: int, divisible_by: int = 1) -> dict:
    """This tp rank's slices of a one-rank state dict; ``splits``: name → Split or None (from
    :func:`minidist.model.parameter_splits` of any model of the same config)."""
    return {name: shard(a, splits.get(name), tp, rank, divisible_by) for name, a in state.items()}


def gather_state_dict(shards: list, splits: dict, vocab_size: int) -> dict:
    """The one-rank state dict from every tp rank's shard (in tp-rank order); padded axes
    (the vocabulary) are cut back to ``vocab_size``."""
    return {name: unshard([s[name] for s in shards], splits.get(name), vocab_size) for name in shards[0]}


def norm_duplicates(model, tp_rank: int) -> list:
    """The parameters this rank leaves out of the global gradient norm, so that each weight of
    the one-rank model is counted once over the model-parallel group: the tp-replicated ones
    (no split: LayerNorms, row-parallel biases, positions) on tp ranks other than 0
    (Megatron's ``param_is_not_tensor_parallel_duplicate``), and a ``shared`` copy (the last
    stage's tied LM head, counted by the first stage: Megatron's ``param_is_not_shared``)."""
    return [p for p in model.parameters() if p.shared or (tp_rank != 0 and split_of(p) is None)]


def whole_tensor_squares(tp_group):
    """For LAMB under tensor parallelism: ``(p, [Σw², Σu²] of my slice) → the whole tensor's``,
    summed over ``tp_group`` for a split parameter (a replicated one is whole already). The
    trust ratio ‖w‖/‖u‖ is then the one-rank model's (You et al. 2020 take it per tensor)."""
    def squares(p, local):
        if split_of(p) is None:
            return local
        # why: each tp rank holds one slice of p; the tensor's norms sum the slices' squares
        return dist.all_reduce(tp_group, local, op="sum", algorithm="ring")
    return squares
