"""The communication operators of tensor and sequence parallelism, as autograd ops.

Megatron-LM (Shoeybi et al. 2019, §3) needs only two conjugate operators around each
parallel block; the paper calls them ``f`` and ``g``:

=========================================  ======================  ======================
operator (Megatron's name)                 forward                 backward
=========================================  ======================  ======================
``f`` copy_to_tensor_model_parallel_region identity                all-reduce over tp
``g`` reduce_from_tensor_model_parallel_.. all-reduce over tp      identity
=========================================  ======================  ======================

``f`` sits where a replicated activation enters a column-parallel layer: every rank uses
the whole input, so its gradient is the *sum* of every rank's partial gradient. ``g`` sits
where a row-parallel layer's partial outputs leave: they are summed, and the gradient of a
sum is the same for every term.

Sequence parallelism (Korthikanti et al. 2022, §4.2.2) keeps the regions between blocks
(LayerNorm, dropout, residual adds) split along the *sequence*, ``s/t`` positions per rank,
and replaces ``g`` by a reduce-scatter (``ḡ``) and ``f`` by an all-gather — the same bytes,
since a ring all-reduce *is* a reduce-scatter followed by an all-gather:

=========================================  ======================  ======================
gather_from_sequence_parallel_region       all-gather along s      reduce-scatter along s
reduce_scatter_to_sequence_parallel_region reduce-scatter along s  all-gather along s
scatter_to_sequence_parallel_region        keep my s/t slice       all-gather along s
gather_from_tensor_model_parallel_region   all-gather along last   keep my slice
=========================================  ======================  ======================

Activations are laid out ``(B, T, C)`` (batch first, as nanoGPT; Megatron uses ``(s, b, h)``),
so the sequence axis is 1. Every collective is a ring (NCCL's default for large messages)
on the tensor-parallel communicator ``group``; under ``autocast`` activations travel in the
16-bit format (2 bytes per element on the wire).
"""
from __future__ import annotations

import numpy as np

from ... import distributed as dist
from ...autocast import autocast, autocast_dtype
from ...tensor import Tensor, as_tensor, make_result


# -- the collectives on arrays (B, T, C) -------------------------------------------------------
def _reshaped(out, shape_fn, async_op: bool):
    """The collective's result reshaped — at once, or inside its Work (``async_op``)."""
    if async_op:
        out.result = shape_fn(out.result)
        return out
    return shape_fn(out)


def all_reduce(group, x: np.ndarray, wire=None, async_op: bool = False):
    return dist.all_reduce(group, x, op="sum", algorithm="ring", wire_dtype=wire, async_op=async_op)


def all_gather_sequence(group, x: np.ndarray, wire=None, async_op: bool = False):
    """(B, T/t, C) on every rank → (B, T, C): the ranks' slices side by side along T.
    ``async_op``: a Work whose ``wait()`` gives it (the gather runs on the comm stream)."""
    t = group.size
    B, Ts, C = x.shape
    flat = dist.all_gather(group, x, algorithm="ring", wire_dtype=wire, async_op=async_op)   # (t·B·Ts·C,)
    return _reshaped(flat, lambda f: f.reshape(t, B, Ts, C).transpose(1, 0, 2, 3).reshape(B, t * Ts, C), async_op)


def reduce_scatter_sequence(group, x: np.ndarray, wire=None, async_op: bool = False):
    """(B, T, C) partial sums on every rank → (B, T/t, C): my positions, summed over ranks."""
    t = group.size
    B, T, C = x.shape
    chunks = np.ascontiguousarray(x.reshape(B, t, T // t, C).transpose(1, 0, 2, 3))   # (t, B, T/t, C)
    out = dist.reduce_scatter(group, chunks, op="sum", algorithm="ring", wire_dtype=wire, async_op=async_op)
    return _reshaped(out, lambda o: o.reshape(B, T // t, C), async_op)


def sequence_slice(group, x: np.ndarray) -> np.ndarray:
    """My contiguous ``T/t`` positions of a (B, T, C) array (no communication)."""
    Ts = x.shape[1] // group.size
    return x[:, group.rank * Ts:(group.rank + 1) * Ts]


def _identity_op(x: Tensor, backward, name: str) -> Tensor:
    """An op whose forward returns its input unchanged (no copy). Built outside autocast:
    an identity changes no value, so nothing is rounded on the way through."""
    with autocast(None):
        return make_result(x.data, (x,), backward, name)


# -- f and g: tensor parallelism ---------------------------------------------------------------
def copy_to_tensor_model_parallel_region(x, group) -> Tensor:
    """``f``: identity forward; backward all-reduces the gradient over the tp ranks."""
    x = as_tensor(x)
    wire = autocast_dtype()

    def backward(g, needs):
        # why: every tp rank consumed the whole x with its own shard of the next layer;
        # dL/dx is the sum of their partial gradients
        return (all_reduce(group, g, wire),)
    return _identity_op(x, backward, "copy_to_tp")


def reduce_from_tensor_model_parallel_region(x, group) -> Tensor:
    """``g``: all-reduce forward (sum the row-parallel partial outputs); identity backward."""
    x = as_tensor(x)
    # why: each tp rank computed a partial sum (its rows of W); the layer's output is their sum
    out = all_reduce(group, x.data, autocast_dtype())
    return make_result(out, (x,), lambda g, needs: (g,), "reduce_from_tp")


def gather_from_tensor_model_parallel_region(x, group) -> Tensor:
    """All-gather along the last axis (column-parallel outputs side by side); backward keeps
    my slice. Used only to return whole logits for generation (Megatron's parallel_output=False)."""
    x = as_tensor(x)
    t, n = group.size, x.shape[-1]
    # why: a caller wants every column (e.g. argmax over the whole vocabulary)
    flat = dist.all_gather(group, x.data, algorithm="ring")                 # (t·…·n,)
    out = np.moveaxis(flat.reshape(t, *x.shape), 0, -2).reshape(*x.shape[:-1], t * n)   # (..., t·n)

    def backward(g, needs):
        return (np.ascontiguousarray(g[..., group.rank * n:(group.rank + 1) * n]),)
    return make_result(out, (x,), backward, "gather_from_tp")


# -- sequence parallelism ----------------------------------------------------------------------
def scatter_to_sequence_parallel_region(x, group) -> Tensor:
    """Keep my ``T/t`` positions (no message); backward all-gathers the gradient along T."""
    x = as_tensor(x)
    wire = autocast_dtype()

    def backward(g, needs):
        # why: the positions I dropped were used by the other ranks; their gradients come back whole
        return (all_gather_sequence(group, g, wire),)
    with autocast(None):                       # a slice changes no value
        return make_result(sequence_slice(group, x.data), (x,), backward, "scatter_to_sp")


def gather_from_sequence_parallel_region(x, group, tensor_parallel_output_grad: bool = True) -> Tensor:
    """All-gather along T forward (the column-parallel layer needs the whole sequence);
    backward reduce-scatters (each rank's gradient covers all positions but only its columns).
    ``tensor_parallel_output_grad=False`` (Megatron's flag): the consumer is replicated — every
    tp rank computes the same function of the whole sequence (a distillation loss on the
    hidden states) — so every rank's gradient is already whole: backward keeps my positions."""
    x = as_tensor(x)
    wire = autocast_dtype()
    # why: the next (column-parallel) layer mixes positions only through attention, but every
    # rank must see every position of the sequence for its heads / columns
    out = all_gather_sequence(group, x.data, wire)

    def backward(g, needs):
        if not tensor_parallel_output_grad:
            return (np.ascontiguousarray(sequence_slice(group, g)),)
        # why: sum the partial gradients of all tp ranks and keep my positions
        return (reduce_scatter_sequence(group, g, wire),)
    with autocast(None):                       # a gather changes no value
        return make_result(out, (x,), backward, "gather_from_sp")


def reduce_scatter_to_sequence_parallel_region(x, group) -> Tensor:
    """``ḡ``: reduce-scatter along T forward (sum the row-parallel partial outputs, keep my
    positions); backward all-gathers the gradient along T."""
    x = as_tensor(x)
    wire = autocast_dtype()
    # why: the row-parallel outputs are partial sums; the next region needs only my positions of the sum
    out = reduce_scatter_sequence(group, x.data, wire)

    def backward(g, needs):
        # why: the row-parallel layer needs the gradient at every position
        return (all_gather_sequence(group, g, wire),)
    return make_result(out, (x,), backward, "reduce_scatter_to_sp")


class CheckpointPartition:
    """How ``partition_activations`` (DeepSpeed) shards an activation checkpoint that every tp
    rank holds whole (a block's input without sequence parallelism): each rank keeps one flat
    chunk (padded to a multiple of t) and the chunks are all-gathered before the recompute."""

    def __init__(self, group):
        self.group = group

    def split(self, x: np.ndarray) -> np.ndarray:
        flat = x.reshape(-1)
        pad = -flat.size % self.group.size
        return np.split(np.concatenate([flat, np.zeros(pad, flat.dtype)]), self.group.size)[self.group.rank].copy()

    def gather(self, chunk: np.ndarray, shape: tuple, wire=None) -> np.ndarray:
        # why: the recompute needs the whole input; each tp rank kept one chunk of it
        flat = dist.all_gather(self.group, chunk, algorithm="ring", wire_dtype=wire)
        return flat[:int(np.prod(shape))].reshape(shape)
