"""The tensor-parallel GPT: nanoGPT's model with Megatron's layers, one shard per tp rank.

Built from the one-rank :class:`~minidist.model.GPT` of the same seed: the full weights are
initialised once (off the device), :func:`shard_state_dict` cuts this rank's slices, and the
parallel layers hold only those. :func:`gather_state_dict` puts the slices back together, so
a tensor-parallel run can be compared with one rank weight for weight. Parameter names are
the one-rank names (``transformer.h.0.attn.c_attn.weight``…), holding the shard.

Per block (Shoeybi et al. 2019, Figure 3)::

    x ─ ln_1 ─ f ─ c_attn (column: n_head/t heads' q, k, v) ─ attention ─ c_proj (row) ─ g ─ + x
    x ─ ln_2 ─ f ─ c_fc (column: 4h/t)  ─ GELU ─ c_proj (row) ─ g ─ + x

With ``sequence_parallel`` (Korthikanti et al. 2022) everything outside the two parallel
regions holds ``(B, T/t, C)``: ``f`` becomes an all-gather, ``g`` a reduce-scatter (``ḡ``).
Embedding: the vocabulary-parallel lookup is summed by ``g``, positions are added, and
under sequence parallelism this rank keeps its ``T/t`` positions. The LM head is tied to
the embedding shard: it produces this rank's ``V/t`` logits, and
:func:`~.cross_entropy.vocab_parallel_cross_entropy` never gathers them.

Vocabulary padding (Megatron's ``make_vocab_size_divisible_by``): the table is padded with
zero rows to a multiple of ``divisible_by · t``; the padded logits are masked in the loss.
"""
from __future__ import annotations

import contextvars

import numpy as np

from ... import functional as F
from ...model import GPT, GPTConfig
from ...nn import Dropout, Embedding, Module, ModuleList
from ...tensor import Tensor
from .cross_entropy import vocab_parallel_cross_entropy
from .layers import (ColumnParallelLinear, RowParallelLinear, SequenceParallelLayerNorm,
                     TensorParallelContext, VocabParallelEmbedding, linear_with_sequence_parallel)
from .mappings import (copy_to_tensor_model_parallel_region, gather_from_tensor_model_parallel_region,
                       scatter_to_sequence_parallel_region)
from .random import SlicedGenerator

# How each one-rank parameter is cut: (axis, groups). The axis is split into t blocks, after
# first splitting it into ``groups`` equal parts (c_attn's columns are [q | k | v]: each rank
# takes the same heads of all three). Parameters not listed are replicated.
SPLITS = {
    "attn.c_attn.weight": (1, 3), "attn.c_attn.bias": (0, 3),      # column-parallel, by heads
    "mlp.c_fc.weight": (1, 1), "mlp.c_fc.bias": (0, 1),            # column-parallel
    "attn.c_proj.weight": (0, 1), "mlp.c_proj.weight": (0, 1),     # row-parallel (bias replicated)
    "transformer.wte.weight": (0, 1),                              # vocabulary-parallel rows
}


def padded_vocab_size(vocab_size: int, tp: int, divisible_by: int = 1) -> int:
    """Megatron's ``_vocab_size_with_padding``: round V up to a multiple of ``divisible_by·tp``."""
    multiple = divisible_by * tp
    return -(-vocab_size // multiple) * multiple


def _rule(name: str):
    return next((rule for suffix, rule in SPLITS.items() if name.endswith(suffix)), None)


def shard_state_dict(state: dict, tp: int, rank: int, divisible_by: int = 1) -> dict:
    """This tp rank's slices of a one-rank state dict (the token table padded first)."""
    out = {}
    for name, a in state.items():
        rule = _rule(name)
        if rule is None:
            out[name] = a.copy()
            continue
        axis, groups = rule
        if name.endswith("wte.weight"):
            pad = padded_vocab_size(a.shape[0], tp, divisible_by) - a.shape[0]
            a = np.concatenate([a, np.zeros((pad, a.shape[1]), a.dtype)])      # (V_padded, C)
        parts = [np.split(g, tp, axis=axis)[rank] for g in np.split(a, groups, axis=axis)]
        out[name] = np.concatenate(parts, axis=axis)
    return out


def gather_state_dict(shards: list, vocab_size: int) -> dict:
    """The one-rank state dict from every tp rank's shard (in tp-rank order)."""
    out = {}
    for name in shards[0]:
        rule = _rule(name)
        if rule is None:
            out[name] = shards[0][name].copy()
            continue
        axis, groups = rule
        per_rank = [np.split(s[name], groups, axis=axis) for s in shards]
        out[name] = np.concatenate([np.concatenate([p[g] for p in per_rank], axis=axis)
                                    for g in range(groups)], axis=axis)
        if name.endswith("wte.weight"):
            out[name] = out[name][:vocab_size]                                  # drop the padding
    return out


def norm_duplicates(model) -> list:
    """The parameters this tp rank must leave out of the global gradient norm: the replicated
    ones (LayerNorms, row-parallel biases, the position embedding) on tp ranks other than 0,
    which counts them (Megatron's ``param_is_not_tensor_parallel_duplicate``)."""
    if model.ctx.rank == 0:
        return []
    return [p for name, p in model.named_parameters() if _rule(name) is None]


def _dropout(p: float, seed: int, ctx: TensorParallelContext, sliced: bool) -> Dropout:
    """The one-rank layer's dropout; ``sliced``: this rank's block along axis 1 of its mask
    (heads inside attention, positions under sequence parallelism; see :mod:`.random`)."""
    d = Dropout(p, seed)
    if sliced:
        d.rng = SlicedGenerator(d.rng, axis=1, index=ctx.rank, parts=ctx.size)
    return d


class ParallelAttention(Module):
    def __init__(self, cfg: GPTConfig, sd: dict, prefix: str, ctx: TensorParallelContext, seed: int):
        super().__init__()
        self.ctx = ctx
        self.c_attn = ColumnParallelLinear(sd[prefix + "c_attn.weight"], sd.get(prefix + "c_attn.bias"), ctx)
        self.c_proj = RowParallelLinear(sd[prefix + "c_proj.weight"], sd.get(prefix + "c_proj.bias"), ctx)
        self.attn_dropout = _dropout(cfg.dropout, seed + 1, ctx, True)   # my heads (axis 1) of the mask
        self.resid_dropout = _dropout(cfg.dropout, seed, ctx, ctx.sequence_parallel)
        self.n_head, self.head_size = cfg.n_head // ctx.size, cfg.n_embd // cfg.n_head

    def forward(self, x):
        qkv = self.c_attn(x)                                        # (B, T, 3·C/t): my heads' q, k, v
        B, T, _ = qkv.shape
        nh, hs = self.n_head, self.head_size
        q, k, v = qkv.split(nh * hs, axis=2)                        # 3 × (B, T, C/t)
        q = q.reshape(B, T, nh, hs).transpose(1, 2)                 # (B, nh/t, T, hs)
        k = k.reshape(B, T, nh, hs).transpose(1, 2)
        v = v.reshape(B, T, nh, hs).transpose(1, 2)
        p = self.attn_dropout.p if self.training else 0.0
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True, dropout_p=p, rng=self.attn_dropout.rng)
        y = y.transpose(1, 2).reshape(B, T, nh * hs)                # (B, T, C/t) my heads side by side
        return self.resid_dropout(self.c_proj(y))                   # (B, T, C) or (B, T/t, C) under SP


class ParallelMLP(Module):
    def __init__(self, cfg: GPTConfig, sd: dict, prefix: str, ctx: TensorParallelContext, seed: int):
        super().__init__()
        self.c_fc = ColumnParallelLinear(sd[prefix + "c_fc.weight"], sd.get(prefix + "c_fc.bias"), ctx)
        self.c_proj = RowParallelLinear(sd[prefix + "c_proj.weight"], sd.get(prefix + "c_proj.bias"), ctx)
        self.dropout = _dropout(cfg.dropout, seed, ctx, ctx.sequence_parallel)

    def forward(self, x):
        return self.dropout(self.c_proj(F.gelu(self.c_fc(x))))     # → (B, T, 4C/t) → (B, T, C)


def _layer_norm(cfg, sd, prefix, ctx, dtype) -> SequenceParallelLayerNorm:
    ln = SequenceParallelLayerNorm(cfg.n_embd, cfg.bias, dtype, ctx)
    ln.weight.data[...] = sd[prefix + "weight"]
    if ln.bias is not None:
        ln.bias.data[...] = sd[prefix + "bias"]
    return ln


class ParallelBlock(Module):
    def __init__(self, cfg, sd, prefix, ctx, dtype, seed):
        super().__init__()
        self.ln_1 = _layer_norm(cfg, sd, prefix + "ln_1.", ctx, dtype)
        self.attn = ParallelAttention(cfg, sd, prefix + "attn.", ctx, seed)
        self.ln_2 = _layer_norm(cfg, sd, prefix + "ln_2.", ctx, dtype)
        self.mlp = ParallelMLP(cfg, sd, prefix + "mlp.", ctx, seed + 2)

    def forward(self, x):
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class ParallelTransformer(Module):
    def __init__(self, cfg, sd, ctx, dtype, seed, vocab_start):
        super().__init__()
        self.wte = VocabParallelEmbedding(sd["transformer.wte.weight"], vocab_start, ctx)
        self.wpe = Embedding(cfg.block_size, cfg.n_embd, dtype=dtype)
        self.wpe.weight.data[...] = sd["transformer.wpe.weight"]
        self.drop = _dropout(cfg.dropout, seed, ctx, ctx.sequence_parallel)
        self.h = ModuleList([ParallelBlock(cfg, sd, f"transformer.h.{i}.", ctx, dtype, seed + 10 * (i + 1))
                             for i in range(cfg.n_layer)])
        self.ln_f = _layer_norm(cfg, sd, "transformer.ln_f.", ctx, dtype)


class TensorParallelGPT(Module):
    """This tp rank's part of GPT-2. ``model(idx, targets)`` → ``(logits, loss)`` where the
    logits are this rank's ``(B, T, V_padded/t)`` slice; without targets (generation) the
    whole ``(B, T, V)`` logits are gathered, as Megatron's ``parallel_output=False``."""

    def __init__(self, config: GPTConfig, group, seed: int = 0, dtype=np.float32,
                 sequence_parallel: bool = False, make_vocab_size_divisible_by: int = 1):
        super().__init__()
        self.config = config
        t = group.size
        check_tensor_parallel(config, t)
        self.ctx = TensorParallelContext(group, sequence_parallel)
        self.padded_vocab_size = padded_vocab_size(config.vocab_size, t, make_vocab_size_divisible_by)
        self.make_vocab_size_divisible_by = make_vocab_size_divisible_by
        self.vocab_start = group.rank * (self.padded_vocab_size // t)
        # The one-rank weights, built in an empty context: no device is active there, so they
        # are not charged to this rank (Megatron initialises the master weight on the CPU and
        # keeps its slice: _initialize_affine_weight_cpu). Only the shards become Parameters.
        full = contextvars.Context().run(lambda: GPT(config, seed=seed, dtype=dtype).state_dict())
        sd = shard_state_dict(full, t, group.rank, make_vocab_size_divisible_by)
        self.transformer = ParallelTransformer(config, sd, self.ctx, dtype, seed, self.vocab_start)
        for name, p in self._named_parameters_all(""):
            p.name = name

    def forward(self, idx, targets=None):
        ids = idx.data if isinstance(idx, Tensor) else np.asarray(idx)
        B, T = ids.shape
        if T > self.config.block_size:
            raise ValueError(f"sequence length {T} exceeds block_size {self.config.block_size}")
        ctx, tr = self.ctx, self.transformer
        sp = ctx.sequence_parallel
        # generation feeds prompts of any length; a length that does not divide by t runs this
        # forward without sequence parallelism (same weights, same result, no gradients)
        ctx.sequence_parallel = sp and T % ctx.size == 0
        try:
            x = tr.wte(ids) + tr.wpe(np.arange(T))                   # (B, T, C)
            if ctx.sequence_parallel:
                x = scatter_to_sequence_parallel_region(x, ctx.group)   # (B, T/t, C)
            x = tr.drop(x)
            for block in tr.h:
                x = block(x)
            x = tr.ln_f(x)
            head = tr.wte.weight.T                                   # tied head: (C, V_padded/t)
            if ctx.sequence_parallel:
                logits = linear_with_sequence_parallel(x, head, None, ctx.group)   # (B, T, V_padded/t)
            else:
                logits = F.matmul(copy_to_tensor_model_parallel_region(x, ctx.group), head)
        finally:
            ctx.sequence_parallel = sp
        if targets is None:
            whole = gather_from_tensor_model_parallel_region(logits, ctx.group)    # (B, T, V_padded)
            return whole[:, :, :self.config.vocab_size], None
        loss = vocab_parallel_cross_entropy(logits, targets, ctx.group, self.vocab_start,
                                            self.config.vocab_size, ignore_index=-1)
        return logits, loss


def heads_problem(n_head: int, tp: int) -> str | None:
    """Why ``n_head`` heads cannot be split over ``tp`` ranks (naming the config key and the fix), or None."""
    if n_head % tp == 0:
        return None
    return (f"model.n_head {n_head} is not divisible by parallel.tensor {tp}: each rank holds n_head/t heads; "
            f"choose parallel.tensor among {[d for d in range(1, n_head + 1) if n_head % d == 0]}")


def check_tensor_parallel(config: GPTConfig, tp: int) -> None:
    """Shapes tensor parallelism needs; a ValueError naming the config key and the fix."""
    problem = heads_problem(config.n_head, tp)
    if problem:
        raise ValueError(problem)
