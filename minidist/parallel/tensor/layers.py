"""Megatron-LM's parallel layers (Shoeybi et al. 2019, §3), each built from a shard of the
one-rank layer's weights.

Weights are stored ``(in_features, out_features)`` (nanoGPT's layout, ``y = x @ W + b``), so

* :class:`ColumnParallelLinear` keeps a block of **columns** ``W[:, r·n/t:(r+1)·n/t]`` and its
  slice of the bias: every rank needs the whole input (``f`` before it) and produces its own
  slice of the output features — no communication after it;
* :class:`RowParallelLinear` keeps a block of **rows** ``W[r·k/t:(r+1)·k/t, :]``: it takes the
  column-parallel layer's slice of features and produces a partial sum of the whole output,
  summed over the ranks by ``g`` (or ``ḡ`` under sequence parallelism). The bias is
  replicated and added once, after the sum;
* :class:`VocabParallelEmbedding` keeps rows ``[r·V/t, (r+1)·V/t)`` of the token table: ids
  outside the slice look up zeros, ``g`` sums the ranks' lookups.

Under sequence parallelism (Korthikanti et al. 2022, §4.2.2) the column-parallel layer
all-gathers its ``(B, T/t, C)`` input but **saves only the shard** for backward and gathers
it again there to form ``dW`` (:func:`linear_with_sequence_parallel`, after Megatron's
``LinearWithGradAccumulationAndAsyncCommunication``): the saved input is ``sbh/t``, at the
price of one more all-gather per column-parallel layer in backward. Megatron's layer is
*asynchronous* — the backward's all-gather and reduce-scatter travel while the matmuls run;
here they do so only with ``parallel.tp_comm_overlap`` (``overlap_comm``, the collectives on
the communication stream of the simulated clock); without it every collective runs before
or after the matmul that needs it, one after the other, with the same values. Parameters replicated
over tp but used on only ``T/t`` positions (LayerNorm weights, row-parallel biases) get
partial gradients; :func:`sequence_parallel_param` sums them over tp in the graph.
"""
from __future__ import annotations

import dataclasses

import numpy as np

from ... import functional as F
from ...autocast import autocast_dtype, cast_input
from ...device import current_device
from ...nn import LayerNorm, Module
from ...tensor import Parameter, Tensor, as_tensor, make_result
from .mappings import (all_gather_sequence, all_reduce, copy_to_tensor_model_parallel_region,
                       gather_from_sequence_parallel_region,
                       reduce_from_tensor_model_parallel_region, reduce_scatter_sequence,
                       reduce_scatter_to_sequence_parallel_region)


@dataclasses.dataclass
class TensorParallelContext:
    """What every parallel layer of one rank shares: the tensor-parallel communicator and
    whether the regions between blocks are split along the sequence. Passed explicitly."""

    group: object                   # grid.tp
    sequence_parallel: bool = False
    overlap_comm: bool = False      # backward's collectives on the comm stream, under the matmuls
    naive_sequence_parallel: bool = False   # gather, then an ordinary linear that keeps the whole input

    @property
    def size(self) -> int:
        return self.group.size

    @property
    def rank(self) -> int:
        return self.group.rank


def sequence_parallel_param(p: Parameter, ctx: TensorParallelContext):
    """The parameter as this forward uses it. Under sequence parallelism a replicated
    parameter sees only this rank's positions, so its gradient is partial: route it through
    ``f`` (identity forward, all-reduce backward). Megatron instead all-reduces these
    gradients once per step after backward (``_allreduce_layernorm_grads``); summing them in
    the graph, per micro-batch, stays right when a ZeRO-2 bucket consumes gradients during
    backward. Without sequence parallelism every rank already has the whole gradient."""
    if p is None or not ctx.sequence_parallel:
        return p
    return copy_to_tensor_model_parallel_region(p, ctx.group)


def _charge(name: str, flops: int) -> None:
    dev = current_device()
    if dev is not None:
        dev.compute(name, int(flops), matmul=True)


def linear_with_sequence_parallel(x, weight, bias, group, overlap: bool = False) -> Tensor:
    """``all_gather(x) @ W + b`` for x ``(B, T/t, in)``: output ``(B, T, out)``.

    Saves only ``x``'s shard; backward gathers it again for ``dW`` and reduce-scatters ``dx``.
    ``overlap`` (Megatron's ``LinearWithGradAccumulationAndAsyncCommunication``): backward
    launches the all-gather on the communication stream and computes ``dx`` meanwhile, then
    launches the reduce-scatter of ``dx`` and computes ``dW`` meanwhile — the same values,
    only the simulated clock differs.
    """
    x, weight = as_tensor(x), as_tensor(weight)
    wire = autocast_dtype()
    xs = cast_input(x.data)                                      # (B, T/t, in), what is saved
    wd = cast_input(weight.data)                                 # (in, out)
    # why: the column-parallel layer needs every position; each rank holds T/t of them
    x_full = all_gather_sequence(group, xs, wire)                # (B, T, in)
    B, T, k = x_full.shape
    n = wd.shape[1]
    out = (x_full.reshape(B * T, k) @ wd).reshape(B, T, n)       # (B, T, out)
    if bias is not None:
        bias = as_tensor(bias)
        out += bias.data
    flops = 2 * B * T * k * n

    def backward(g, needs):
        gx = gw = gb = None
        g2 = g.reshape(B * T, n)                                  # (B·T, out)
        if overlap and needs[0] and needs[1]:
            # why: dW needs every position of the input: gather it while dx is computed
            gathering = all_gather_sequence(group, xs, wire, async_op=True)
            _charge("linear.dx", flops)
            dx = (g2 @ wd.T).reshape(B, T, k)                     # (B, T, in), partial over tp
            x_full = gathering.wait()
            # why: sum every rank's share of dx and keep my positions, while dW is computed
            scattering = reduce_scatter_sequence(group, dx, wire, async_op=True)
            _charge("linear.dW", flops)
            gw = F.linear_weight_grad(x_full, g2)
            gx = scattering.wait()
            if bias is not None and needs[2]:
                gb = g2.sum(axis=0)
            return gx, gw, gb
        if needs[0]:
            _charge("linear.dx", flops)
            dx = (g2 @ wd.T).reshape(B, T, k)                     # (B, T, in), partial over tp
            # why: every rank's dx covers all positions but only its columns' share: sum, keep mine
            gx = reduce_scatter_sequence(group, dx, wire)
        if needs[1]:
            _charge("linear.dW", flops)
            # why: dW needs the input at every position, and only my shard was saved (§4.2.2)
            gw = F.linear_weight_grad(all_gather_sequence(group, xs, wire), g2)
        if bias is not None and needs[2]:
            gb = g2.sum(axis=0)
        return gx, gw, gb
    parents = (x, weight) if bias is None else (x, weight, bias)
    return make_result(out, parents, backward, "linear", saved=[xs], flops=flops, matmul=True)


def linear_with_async_all_reduce(x, weight, bias, group) -> Tensor:
    """``f`` and a column-parallel ``x @ W + b`` as one op (tensor parallelism without SP), so
    that backward can launch the all-reduce of ``dx`` on the communication stream and compute
    ``dW`` while it travels (Megatron's ``async_tensor_model_parallel_allreduce``). The same
    values as ``F.linear(copy_to_tensor_model_parallel_region(x), W, b)``: the all-reduce sums
    the same ``dx`` on the same wire format."""
    x, weight = as_tensor(x), as_tensor(weight)
    wire = autocast_dtype()
    xd, wd = cast_input(x.data), cast_input(weight.data)
    x2 = xd.reshape(-1, x.shape[-1])                              # (B·T, in)
    out = x2 @ wd                                                 # (B·T, out/t)
    if bias is not None:
        bias = as_tensor(bias)
        out += bias.data
    m, k, n = x2.shape[0], wd.shape[0], wd.shape[1]
    out = out.reshape(*x.shape[:-1], n)
    flops = 2 * m * n * k

    def backward(g, needs):
        gx = gw = gb = None
        g2 = g.reshape(-1, n)
        if needs[0]:
            _charge("linear.dx", flops)
            dx = (g2 @ wd.T).reshape(x.shape)                     # my columns' share of dL/dx
            # why: every tp rank used the whole x; dL/dx sums their shares — sent while dW computes
            summing = all_reduce(group, dx, wire, async_op=needs[1])
        if needs[1]:
            _charge("linear.dW", flops)
            gw = F.linear_weight_grad(x2, g2)
        if bias is not None and needs[2]:
            gb = g2.sum(axis=0)
        if needs[0]:
            gx = summing.wait() if needs[1] else summing
        return gx, gw, gb
    parents = (x, weight) if bias is None else (x, weight, bias)
    return make_result(out, parents, backward, "linear", saved=[xd], flops=flops, matmul=True)


class ColumnParallelLinear(Module):
    """``y_r = x @ W[:, cols_r] + b[cols_r]`` — output features split over tp ranks."""

    def __init__(self, weight: np.ndarray, bias: np.ndarray | None, ctx: TensorParallelContext):
        super().__init__()
        self.ctx = ctx
        self.weight = Parameter(weight)                           # (in, out/t)
        self.bias = Parameter(bias) if bias is not None else None  # (out/t,)

    def forward(self, x):
        if self.ctx.sequence_parallel and self.ctx.naive_sequence_parallel:
            # the naive way: all-gather the sequence (backward: reduce-scatter), then a linear that
            # saves the gathered (B, T, in) input — sbh where Megatron's keeps sbh/t
            return F.linear(gather_from_sequence_parallel_region(x, self.ctx.group), self.weight, self.bias)
        if self.ctx.sequence_parallel:                            # x: (B, T/t, in)
            return linear_with_sequence_parallel(x, self.weight, self.bias, self.ctx.group, self.ctx.overlap_comm)
        if self.ctx.overlap_comm:                                 # f fused in: dx's all-reduce under dW
            return linear_with_async_all_reduce(x, self.weight, self.bias, self.ctx.group)
        x = copy_to_tensor_model_parallel_region(x, self.ctx.group)   # f
        return F.linear(x, self.weight, self.bias)                # (B, T, out/t)


class RowParallelLinear(Module):
    """``y = Σ_r x_r @ W[rows_r, :] + b`` — input features split, output summed over tp."""

    def __init__(self, weight: np.ndarray, bias: np.ndarray | None, ctx: TensorParallelContext):
        super().__init__()
        self.ctx = ctx
        self.weight = Parameter(weight)                           # (in/t, out)
        self.bias = Parameter(bias) if bias is not None else None  # (out,) replicated

    def forward(self, x):
        partial = F.linear(x, self.weight)                        # (B, T, out), this rank's share
        if self.ctx.sequence_parallel:
            y = reduce_scatter_to_sequence_parallel_region(partial, self.ctx.group)   # ḡ: (B, T/t, out)
        else:
            y = reduce_from_tensor_model_parallel_region(partial, self.ctx.group)     # g: (B, T, out)
        if self.bias is not None:
            y = y + sequence_parallel_param(self.bias, self.ctx)
        return y


def vocab_parallel_embedding(idx, weight, vocab_start: int) -> Tensor:
    """Rows ``weight[id − vocab_start]`` for ids in this rank's slice, zeros elsewhere."""
    ids = np.asarray(idx.data if isinstance(idx, Tensor) else idx)
    weight = as_tensor(weight)
    n = weight.shape[0]
    local = ids - vocab_start                                     # (B, T) index into my rows
    mine = (local >= 0) & (local < n)
    out = weight.data[np.where(mine, local, 0)]                   # (B, T, C)
    out[~mine] = 0.0

    def backward(g, needs):
        local = ids - vocab_start                                 # recomputed: only ids are saved
        mine = (local >= 0) & (local < n)
        gw = np.zeros_like(weight.data)
        np.add.at(gw, local[mine], g[mine])                       # scatter-add my ids' rows
        return (gw,)
    return make_result(out, (weight,), backward, "embedding", saved=[ids])


class VocabParallelEmbedding(Module):
    """The token table split by rows (vocabulary) over tp; ``g`` sums the partial lookups."""

    def __init__(self, weight: np.ndarray, vocab_start: int, ctx: TensorParallelContext):
        super().__init__()
        self.ctx, self.vocab_start = ctx, vocab_start
        self.weight = Parameter(weight)                           # (V_padded/t, C)

    def forward(self, idx):
        partial = vocab_parallel_embedding(idx, self.weight, self.vocab_start)   # (B, T, C)
        return reduce_from_tensor_model_parallel_region(partial, self.ctx.group)  # g


class SequenceParallelLayerNorm(LayerNorm):
    """nn.LayerNorm whose weight and bias are summed over tp in backward under sequence
    parallelism (Megatron marks them ``sequence_parallel`` for the same reason)."""

    def __init__(self, n: int, bias: bool, dtype, ctx: TensorParallelContext):
        super().__init__(n, bias, dtype=dtype)
        self.ctx = ctx

    def forward(self, x):
        return F.layer_norm(x, sequence_parallel_param(self.weight, self.ctx),
                            sequence_parallel_param(self.bias, self.ctx), self.eps)
