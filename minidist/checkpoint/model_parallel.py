"""Tensor- and pipeline-parallel layouts in a checkpoint: where a rank's pieces sit in the
one-rank model, and back.

A checkpoint always names the one-rank model's parameters with their full shapes (what
:func:`~minidist.checkpoint.reshard.assemble` rebuilds and ``consolidate`` writes), so any
layout can load it:

* **pipeline**: a rank holds whole parameters of its stages only; it saves those (the tied
  embedding is saved by the first and the last stage alike: the same bits) and loads those;
* **tensor**: a rank holds slices, cut by the split each parameter carries
  (``partition_dim``, ``partition_stride``: :mod:`minidist.parallel.split`). Each
  piece it saves — a whole shard, or under ZeRO a flat chunk of it — is cut into
  rectangular blocks, and each block becomes a fragment with one ``[lo, hi)`` per
  dimension of the *full* array (Megatron's ``c_attn`` shard is three blocks, this rank's
  heads of q, k and v; rows of the vocabulary padding are dropped). Loading cuts this rank's
  shard out of the full arrays with :func:`~minidist.parallel.split.shard`,
  padding included — the resharding of DeepSpeed's universal checkpoint and Megatron's
  ``--ckpt-format torch_dist``, for one more dimension.
"""
from __future__ import annotations

import numpy as np

from ..model import one_rank_shapes, parameter_splits
from ..parallel.split import shard


def flat_blocks(shape: tuple, lo: int, hi: int) -> list:
    """The elements ``[lo, hi)`` of a row-major array of ``shape`` as rectangular blocks,
    each contiguous in flat order: ``[(flat start, [(lo, hi) per dimension]), …]``."""
    if lo >= hi:
        return []
    if len(shape) <= 1:
        return [(lo, [(lo, hi)])]
    inner = int(np.prod(shape[1:]))
    first, last = lo // inner, (hi - 1) // inner
    if lo % inner == 0 and hi % inner == 0:                                    # whole rows
        return [(lo, [(lo // inner, hi // inner)] + [(0, n) for n in shape[1:]])]
    if first == last:                                                          # inside one row
        return [(first * inner + s, [(first, first + 1)] + b)
                for s, b in flat_blocks(shape[1:], lo - first * inner, hi - first * inner)]
    head, tail = -(-lo // inner) * inner, hi // inner * inner                 # row borders
    return flat_blocks(shape, lo, head) + flat_blocks(shape, head, tail) + flat_blocks(shape, tail, hi)


class TensorParallelPlacement:
    """Where this tp rank's slices sit in the full arrays of the one-rank model, read from
    the splits its parameters carry."""

    def __init__(self, model):
        layers = model.layers
        self.t, self.rank = layers.size, layers.rank
        self.vocab_size = model.config.vocab_size            # the unpadded length of a padded axis
        self.divisible_by = layers.divisible_by
        self.splits = parameter_splits(model)

    def sharded(self, name: str) -> bool:
        return self.splits.get(name) is not None

    def full_shape(self, name: str, local_shape: tuple) -> tuple:
        split = self.splits.get(name)
        if split is None:
            return tuple(local_shape)
        shape = list(local_shape)
        shape[split.dim] = self.vocab_size if split.padded else shape[split.dim] * self.t
        return tuple(shape)

    def to_full(self, name: str, local_shape: tuple, piece: np.ndarray, lo: int) -> list:
        """``[(per-dimension [lo, hi) in the full array, block)]`` for ``piece``, the elements
        ``[lo, lo + piece.size)`` of this rank's flattened shard of ``name``."""
        split = self.splits[name]
        axis = split.dim
        per = local_shape[axis] // split.stride            # this rank's part of one group
        limit = self.vocab_size if split.padded else None  # rows past V: padding
        out = []
        for start, block in flat_blocks(tuple(local_shape), lo, lo + piece.size):
            arr = piece[start - lo:start - lo + int(np.prod([h - l for l, h in block]))]
            arr = arr.reshape([h - l for l, h in block])   # the block, in shard coordinates
            a, b = block[axis]
            for g in range(a // per, (b - 1) // per + 1):  # split at group (q | k | v) borders
                s, e = max(a, g * per), min(b, (g + 1) * per)
                f_lo = g * per * self.t + self.rank * per + s - g * per
                f_hi = f_lo + e - s if limit is None else min(f_lo + e - s, limit)
                if f_lo >= f_hi:
                    continue                               # only vocabulary padding
                sub = np.take(arr, np.arange(s - a, s - a + f_hi - f_lo), axis=axis)
                out.append(([*block[:axis], (f_lo, f_hi), *block[axis + 1:]], sub))
        return out

    def shard(self, name: str, full: np.ndarray) -> np.ndarray:
        """This rank's slice of a full array of ``name`` (the vocabulary padded with zeros)."""
        return shard(full, self.splits[name], self.t, self.rank, self.divisible_by)


def placement_of(trainer):
    """The trainer's :class:`TensorParallelPlacement`, or None when its parameters are whole."""
    return TensorParallelPlacement(trainer.model) if trainer.cfg["parallel"]["tensor"] > 1 else None


def full_shapes(trainer) -> dict:
    """name → shape of every parameter of the one-rank model (every rank records all of them,
    whatever part it holds)."""
    return one_rank_shapes(trainer.model_config)


def local_universal(trainer, universal: dict) -> dict:
    """The part of the full named arrays this rank holds: its stages' parameters (pipeline),
    its slices of them (tensor), or all of them."""
    held = {name for name, _ in trainer.strategy.model.named_parameters()}
    place = placement_of(trainer)
    out = {}
    for name in held:
        u = universal[name]
        out[name] = {k: place.shard(name, v) if place and isinstance(v, np.ndarray) else v for k, v in u.items()}
    return out
