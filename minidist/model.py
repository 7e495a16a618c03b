"""GPT-2 (Radford et al. 2019) in minidist, with nanoGPT's structure and parameter names.

Pre-LayerNorm blocks: x = x + attn(ln_1(x)); x = x + mlp(ln_2(x)); learned positional
embeddings; final ln_f; LM head tied to the token embedding ``wte``. Linear weights are
stored (in_features, out_features) so every layer computes y = x @ W + b.

**One model for every layout.** This file is the only GPT. Its forward is three steps,
``embed → blocks → head``, and every parallelism reuses them:

* one rank builds every layer with the plain factory, :class:`Layers`;
* tensor parallelism passes Megatron's factory
  (:class:`minidist.parallel.tensor.TensorParallelLayers`): same blocks, same forward, each
  linear a column- or row-parallel shard (Megatron-LM's layer specs: ``tp = 1`` gives the
  plain layer);
* a pipeline rank builds only its blocks (``layer_ids``), the embeddings if it holds the
  first stage (``pre_process``) and ``ln_f`` + the head if it holds the last
  (``post_process``), Megatron's names; :mod:`minidist.parallel.pipeline.stage` runs the three
  steps chunk by chunk.

How each parameter is split is an attribute of the parameter (``partition_dim``,
``partition_stride``, …, see :class:`~minidist.tensor.Parameter`), set once by the factory
below, so that tensor parallelism, checkpoints, clipping and ZeRO read it, not a rule keyed
on names.
"""
from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import math

import numpy as np

from . import functional as F
from .nn import Dropout, Embedding, LayerNorm, Linear, Module, ModuleList
from .tensor import Parameter, Tensor


@dataclasses.dataclass
class GPTConfig:
    """nanoGPT's field names. The default is a tiny model that trains in seconds."""

    block_size: int = 64
    vocab_size: int = 65
    n_layer: int = 2
    n_head: int = 4
    n_embd: int = 64
    dropout: float = 0.0
    bias: bool = True

    def __post_init__(self):
        for name in ("block_size", "vocab_size", "n_layer", "n_head", "n_embd"):
            v = getattr(self, name)
            if not isinstance(v, (int, np.integer)) or isinstance(v, bool) or v <= 0:
                raise ValueError(f"model.{name} must be a positive integer, got {v!r}")
        if self.n_embd % self.n_head:
            raise ValueError(f"model.n_embd ({self.n_embd}) must be divisible by model.n_head "
                             f"({self.n_head}); choose n_head among "
                             f"{[h for h in range(1, self.n_embd + 1) if self.n_embd % h == 0][:8]}…")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"model.dropout must be in [0, 1), got {self.dropout}")


# -- how a parameter is split: attributes, set in one place -------------------------------
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


def one_rank_parameters(config: GPTConfig) -> dict:
    """name → parameter of a one-rank model of ``config``, built off any device: the shape and
    split of every parameter, for a rank that holds only part of the model."""
    return dict(contextvars.Context().run(lambda: GPT(config)).named_parameters())


def one_rank_shapes(config: GPTConfig) -> dict:
    """name → shape of every parameter of the one-rank model of ``config``."""
    return {name: tuple(p.shape) for name, p in one_rank_parameters(config).items()}


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
        """A block's output as (B, T, C) on every rank (``return_hidden``)."""
        return x

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


class _Init:
    """Where a model's initial values come from. One rank draws them from ``seed`` in
    construction order (nanoGPT's init); any other layout takes its slices of the one-rank
    values (``full``), so every layout starts from the one-rank model's weights (Megatron's
    ``_initialize_affine_weight_cpu`` initialises the master weight and keeps a slice)."""

    def __init__(self, seed: int, dtype, full: dict | None = None):
        self.rng, self.dtype, self.full = np.random.default_rng(seed), dtype, full

    def normal(self, name: str, shape: tuple, std: float = 0.02):
        if self.full is not None:
            return self.full[name]
        return self.rng.normal(0.0, std, shape).astype(self.dtype)

    def ones(self, name: str, shape: tuple):
        return self.full[name] if self.full is not None else np.ones(shape, self.dtype)

    def zeros(self, name: str, shape: tuple, when: bool = True):
        if not when:
            return None
        return self.full[name] if self.full is not None else np.zeros(shape, self.dtype)


def _linear_arrays(init: _Init, prefix: str, n_in: int, n_out: int, bias: bool, std: float = 0.02):
    return init.normal(prefix + "weight", (n_in, n_out), std), init.zeros(prefix + "bias", (n_out,), bias)


def _layer_norm(layers: Layers, init: _Init, prefix: str, n: int, bias: bool) -> Module:
    return layers.layer_norm(init.ones(prefix + "weight", (n,)), init.zeros(prefix + "bias", (n,), bias))


class CausalSelfAttention(Module):
    def __init__(self, cfg: GPTConfig, layers: Layers, init: _Init, prefix: str, seed: int):
        super().__init__()
        proj_std = 0.02 / math.sqrt(2 * cfg.n_layer)   # GPT-2's scaled init of residual projections
        C = cfg.n_embd
        self.c_attn = layers.column_linear(*_linear_arrays(init, prefix + "c_attn.", C, 3 * C, cfg.bias),
                                           stride=3)             # [q | k | v]: each rank the same heads of all three
        self.c_proj = layers.row_linear(*_linear_arrays(init, prefix + "c_proj.", C, C, cfg.bias, proj_std))
        self.attn_dropout = layers.dropout(cfg.dropout, seed + 1, "heads")   # on the attention probabilities
        self.resid_dropout = layers.dropout(cfg.dropout, seed)
        self.head_size = C // cfg.n_head

    def forward(self, x):
        qkv = self.c_attn(x)                                        # (B, T, 3·C) — 3·C/t: my heads' q, k, v
        B, T, _ = qkv.shape
        hs = self.head_size
        nh = qkv.shape[2] // (3 * hs)                               # heads on this rank (n_head/t)
        q, k, v = qkv.split(nh * hs, axis=2)                        # 3 × (B, T, nh·hs)
        q = q.reshape(B, T, nh, hs).transpose(1, 2)                 # (B, nh, T, hs)
        k = k.reshape(B, T, nh, hs).transpose(1, 2)
        v = v.reshape(B, T, nh, hs).transpose(1, 2)
        p = self.attn_dropout.p if self.training else 0.0
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True, dropout_p=p, rng=self.attn_dropout.rng)
        y = y.transpose(1, 2).reshape(B, T, nh * hs)                # heads side by side again
        return self.resid_dropout(self.c_proj(y))                   # (B, T, C) — (B, T/t, C) under SP


class MLP(Module):
    def __init__(self, cfg: GPTConfig, layers: Layers, init: _Init, prefix: str, seed: int):
        super().__init__()
        proj_std = 0.02 / math.sqrt(2 * cfg.n_layer)
        C = cfg.n_embd
        self.c_fc = layers.column_linear(*_linear_arrays(init, prefix + "c_fc.", C, 4 * C, cfg.bias))
        self.c_proj = layers.row_linear(*_linear_arrays(init, prefix + "c_proj.", 4 * C, C, cfg.bias, proj_std))
        self.dropout = layers.dropout(cfg.dropout, seed)

    def forward(self, x):
        return self.dropout(self.c_proj(F.gelu(self.c_fc(x))))     # (B, T, C) → (B, T, 4C/t) → (B, T, C)


class Block(Module):
    """The Transformer layer: the only one in minidist, whatever the layout."""

    def __init__(self, cfg: GPTConfig, layers: Layers, init: _Init, prefix: str, seed: int):
        super().__init__()
        self.ln_1 = _layer_norm(layers, init, prefix + "ln_1.", cfg.n_embd, cfg.bias)
        self.attn = CausalSelfAttention(cfg, layers, init, prefix + "attn.", seed)
        self.ln_2 = _layer_norm(layers, init, prefix + "ln_2.", cfg.n_embd, cfg.bias)
        self.mlp = MLP(cfg, layers, init, prefix + "mlp.", seed + 2)

    def forward(self, x):
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class Transformer(Module):
    def __init__(self, cfg: GPTConfig, layers: Layers, init: _Init, seed: int, layer_ids, pre: bool, post: bool):
        super().__init__()
        C = cfg.n_embd
        if pre or post:                   # the token table: the embedding, and the tied LM head
            self.wte = layers.vocab_embedding(init.normal("transformer.wte.weight", (cfg.vocab_size, C)))
            mark(self.wte.weight, shared=not pre)    # a last stage's copy: its first stage counts it
        if pre:
            self.wpe = layers.embedding(init.normal("transformer.wpe.weight", (cfg.block_size, C)))
            self.drop = layers.dropout(cfg.dropout, seed)
        self.h = ModuleList([Block(cfg, layers, init, f"transformer.h.{i}.", seed + 10 * (i + 1)) for i in layer_ids],
                            names=layer_ids)
        if post:
            self.ln_f = _layer_norm(layers, init, "transformer.ln_f.", C, cfg.bias)


class GPT(Module):
    """GPT-2. ``model(idx, targets)`` → ``(logits, loss)``; ``return_hidden=True`` adds the
    list of every block's output (B, T, C), used by Patient knowledge distillation.

    ``layers``: the layer factory (:class:`Layers` for one rank). ``layer_ids``,
    ``pre_process``, ``post_process``: the part a pipeline rank builds (default: all of it).
    Whatever the layout, the values are the one-rank model's for ``seed``.
    """

    def __init__(self, config: GPTConfig | None = None, seed: int = 0, dtype=np.float32,
                 layers: Layers | None = None, layer_ids=None, pre_process: bool = True,
                 post_process: bool = True):
        super().__init__()
        self.config = config = config or GPTConfig()
        self.layers = layers = layers if layers is not None else Layers()
        whole = layer_ids is None and pre_process and post_process
        self.layer_ids = list(range(config.n_layer)) if layer_ids is None else list(layer_ids)
        self.pre_process, self.post_process = pre_process, post_process
        full = None
        if layers.size > 1 or not whole:
            # the one-rank values, built in an empty context: no device is active there, so they
            # are not charged to this rank; only this rank's slices become Parameters
            full = contextvars.Context().run(lambda: GPT(config, seed=seed, dtype=dtype).state_dict())
        self.transformer = Transformer(config, layers, _Init(seed, dtype, full), seed, self.layer_ids,
                                       pre_process, post_process)
        for name, p in self._named_parameters_all(""):
            p.name = name

    # -- the three steps ----------------------------------------------------------------------
    def embed(self, idx):
        """Token ids (B, T) → the residual stream (B, T, C), this rank's T/t under SP."""
        ids = idx.data if isinstance(idx, Tensor) else np.asarray(idx)
        if ids.ndim != 2:
            raise ValueError(f"GPT expects token ids of shape (batch, time), got {ids.shape}")
        T = ids.shape[1]
        if T > self.config.block_size:
            raise ValueError(f"sequence length {T} exceeds block_size {self.config.block_size}; "
                             f"raise model.block_size or shorten data.seq_len")
        tr = self.transformer
        x = self.layers.scatter_tokens(tr.wte(ids) + tr.wpe(np.arange(T)))   # (B, T, C)
        return tr.drop(x)

    def blocks(self, x, layer_ids=None, hidden: list | None = None):
        """Run the blocks ``layer_ids`` (default: all this model holds); append each output
        to ``hidden`` (as (B, T, C)) when a list is given."""
        for i in (self.layer_ids if layer_ids is None else layer_ids):
            x = self.transformer.h[i](x)
            if hidden is not None:
                hidden.append(self.layers.gather_tokens(x))
        return x

    def head(self, x, targets=None):
        """ln_f, the tied LM head and the loss: (logits, loss). Under tensor parallelism the
        logits are this rank's vocabulary slice when there are targets, all of them otherwise."""
        tr = self.transformer
        logits = self.layers.lm_head(tr.ln_f(x), tr.wte.weight)     # tied head: (B, T, V)
        if targets is None:
            return self.layers.full_logits(logits), None
        return logits, self.layers.cross_entropy(logits, targets)

    def forward(self, idx, targets=None, return_hidden: bool = False):
        T = np.shape(idx.data if isinstance(idx, Tensor) else idx)[-1]
        with self.layers.sequence(T):
            hidden = [] if return_hidden else None
            logits, loss = self.head(self.blocks(self.embed(idx), hidden=hidden), targets)
        if return_hidden:
            return logits, loss, hidden
        return logits, loss
