"""Structured pruning: whole attention heads and MLP channels, removed for real.

A Transformer layer has two places where a *column-split* linear feeds a *row-split* one —
exactly the pairs Megatron's tensor parallelism cuts (``c_attn`` → ``attn.c_proj`` by heads,
``c_fc`` → ``mlp.c_proj`` by hidden channels; the split is an attribute of each weight,
:func:`minidist.layers.split_of`). A **unit** is what one tensor-parallel rank could own:

* a head ``h``: columns ``h·hs … (h+1)·hs`` of each of the ``stride`` = 3 parts
  ``[q | k | v]`` of ``c_attn`` (weight and bias) and the same rows of ``attn.c_proj``
  (``hs = n_embd / n_head``);
* an MLP channel ``j``: column ``j`` of ``c_fc`` (weight and bias) and row ``j`` of
  ``mlp.c_proj``.

Removing a unit removes its columns and rows: the layer computes the same function with
smaller matrices (a zeroed head attends with q = k = 0 and v = 0 and adds nothing; a zeroed
channel gives GELU(0) = 0), so *compacting* (:func:`compact`) changes no output while it
saves FLOPs and bytes, which :func:`~.targets.measure` counts.

**Score** of a unit: the L2 norm of all the weights it owns (biases excluded) — the
structured counterpart of magnitude pruning (Li et al. 2017 prune filters by norm; Michel et
al. 2019 show many heads can go). **Masks**: in every layer, ``round(fraction · units)``
lowest-scored heads (and, apart, channels) are removed, ties to the lower index; at least
one unit of each kind stays.
"""
from __future__ import annotations

import dataclasses

import numpy as np

from ..layers import mark, split_of
from ..nn import Linear
from .targets import swap


@dataclasses.dataclass
class UnitPair:
    """One layer's units of one kind: a column linear, the row linear after it."""

    name: str                  # e.g. "transformer.h.0.attn"
    kind: str                  # "heads" | "channels"
    module: object             # the attention or MLP module (the parent of both linears)
    column: str                # attribute names of the two linears in ``module``
    row: str
    width: int                 # columns per part of one unit (head size; 1 for channels)

    @property
    def parts(self) -> int:    # [q | k | v]: 3; the MLP: 1 (the weight's partition_stride)
        return split_of(getattr(self.module, self.column).weight).stride

    @property
    def count(self) -> int:
        return getattr(self.module, self.row).weight.shape[0] // self.width

    def columns(self, units) -> np.ndarray:
        """Column indices of ``units`` in the column linear (every part)."""
        part = self.count * self.width
        cols = [p * part + u * self.width + np.arange(self.width) for p in range(self.parts) for u in units]
        return np.sort(np.concatenate(cols)) if cols else np.zeros(0, int)

    def rows(self, units) -> np.ndarray:
        """Row indices of ``units`` in the row linear."""
        return np.sort(np.concatenate([u * self.width + np.arange(self.width) for u in units])) \
            if len(units) else np.zeros(0, int)

    def norms(self) -> np.ndarray:
        """L2 norm of each unit's weights (column-linear columns + row-linear rows)."""
        wc = getattr(self.module, self.column).weight.data.astype(np.float64)
        wr = getattr(self.module, self.row).weight.data.astype(np.float64)
        return np.array([np.sqrt((wc[:, self.columns([u])] ** 2).sum() + (wr[self.rows([u])] ** 2).sum())
                         for u in range(self.count)])


def unit_pairs(model) -> list[UnitPair]:
    """The heads and the MLP channels of every block, in model order."""
    out = []
    for i in model.layer_ids:
        block = model.transformer.h[i]
        out.append(UnitPair(f"transformer.h.{i}.attn", "heads", block.attn, "c_attn", "c_proj", block.attn.head_size))
        out.append(UnitPair(f"transformer.h.{i}.mlp", "channels", block.mlp, "c_fc", "c_proj", 1))
    return out


def structured_masks(pairs, fraction: float) -> dict:
    """name → keep-mask over the pair's units: the lowest-norm ``round(fraction·count)`` go
    (at most count − 1: a pair keeps one unit). ``fraction`` in [0, 1]."""
    if not 0.0 <= fraction <= 1.0:          # NaN fails this too
        raise ValueError(f"structured pruning fraction must be in [0, 1] (the share of heads or channels to "
                         f"remove), got {fraction!r}")
    masks = {}
    for pair in pairs:
        n = pair.count
        k = min(int(round(fraction * n)), n - 1)
        keep = np.ones(n, bool)
        keep[np.argsort(pair.norms(), kind="stable")[:k]] = False
        masks[pair.name] = keep
    return masks


def zero_units(pairs, masks: dict) -> None:
    """Zero the removed units' columns (weight, bias) and rows, keeping the shapes."""
    for pair in pairs:
        gone = np.flatnonzero(~masks[pair.name])
        col, row = getattr(pair.module, pair.column), getattr(pair.module, pair.row)
        col.weight.data[:, pair.columns(gone)] = 0
        if col.bias is not None:
            col.bias.data[pair.columns(gone)] = 0
        row.weight.data[pair.rows(gone)] = 0


def compact(pairs, masks: dict) -> None:
    """Rebuild each pair's two linears with only the kept units (in place): a smaller model
    that computes what the zeroed one computes."""
    for pair in pairs:
        kept = np.flatnonzero(masks[pair.name])
        col, row = getattr(pair.module, pair.column), getattr(pair.module, pair.row)
        cols, rows = pair.columns(kept), pair.rows(kept)
        bias = None if col.bias is None else col.bias.data[cols].copy()
        new_col = Linear.from_arrays(col.weight.data[:, cols].copy(), bias)
        new_row = Linear.from_arrays(row.weight.data[rows].copy(), None if row.bias is None else row.bias.data.copy())
        for old, new in ((col, new_col), (row, new_row)):           # the same split attributes and names
            for a, b in ((old.weight, new.weight), (old.bias, new.bias)):
                if b is not None:
                    mark(b, split_of(a), name=a.name)
        swap(pair.module, pair.column, new_col)
        swap(pair.module, pair.row, new_row)
