"""GPT-2 (Radford et al. 2019) in minidist, with nanoGPT's structure and parameter names.

Pre-LayerNorm blocks: x = x + attn(ln_1(x)); x = x + mlp(ln_2(x)); learned positional
embeddings; final ln_f; LM head tied to the token embedding ``wte``. Linear weights are
stored (in_features, out_features) so every layer computes y = x @ W + b.

**One model for every layout.** This file is the only GPT. Its forward is three steps,
``embed → blocks → head``, and every parallelism reuses them:

* one rank builds every layer with the plain factory, :class:`minidist.layers.Layers`;
* tensor parallelism passes Megatron's factory
  (:class:`minidist.parallel.tensor.TensorParallelLayers`): same blocks, same forward, each
  linear a column- or row-parallel shard (Megatron-LM's layer specs: ``tp = 1`` gives the
  plain layer);
* a pipeline rank builds only its blocks (``layer_ids``), the embeddings if it holds the
  first stage (``pre_process``) and ``ln_f`` + the head if it holds the last
  (``post_process``), Megatron's names; :mod:`minidist.parallel.pipeline.stage` runs the three
  steps chunk by chunk;
* generation (:meth:`GPT.generate`, :mod:`minidist.inference`) runs the same three steps with a
  KV cache: each attention appends its keys and values and attends to all of them.

How each parameter is split is an attribute of the parameter (``partition_dim``,
``partition_stride``, …, see :class:`~minidist.tensor.Parameter`), set once by the factory
(:mod:`minidist.layers`), so that tensor parallelism, checkpoints, clipping and ZeRO read it,
not a rule keyed on names.
"""
from __future__ import annotations

import contextvars
import dataclasses
import functools
import math

import numpy as np

from . import functional as F
from .inference import KVCache, generate
from .layers import Layers, Split, mark, parameter_splits, split_of
from .moe import MoEConfig
from .nn import Module, ModuleList
from .recompute import checkpoint
from .tensor import Tensor

__all__ = ["GPT", "GPTConfig", "KVCache", "Layers", "Recompute", "Split", "mark", "one_rank_parameters",
           "one_rank_shapes", "parameter_splits", "split_of"]


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
    moe: MoEConfig | None = None      # a mixture of experts in every every_n_layers-th block (minidist.moe)

    def __post_init__(self):
        if isinstance(self.moe, dict):
            self.moe = MoEConfig(**self.moe)
        elif isinstance(self.moe, tuple):             # dataclasses.astuple's form (one_rank_parameters' cache key)
            self.moe = MoEConfig(*self.moe)
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
        self.attention = layers.attention     # the core's kernel: context parallelism gives ring or Ulysses
        self.recompute_core = False       # selective recomputation (Korthikanti et al. 2022, §5)
        self.recompute_cpu = False        # its checkpoint (q, k, v) in the host pool
        self.kv_prefix = None             # prefix-tuning / P-tuning v2: trainable keys and values (minidist.peft)

    def core(self, q, k, v):
        """softmax(QKᵀ/√d)·V with dropout on the probabilities: the (B, nh, T, Tk) part."""
        p = self.attn_dropout.p if self.training else 0.0
        return self.attention(q, k, v, is_causal=True, dropout_p=p, rng=self.attn_dropout.rng)

    def forward(self, x, kv_cache=None):
        qkv = self.c_attn(x)                                        # (B, T, 3·C) — 3·C/t: my heads' q, k, v
        B, T, _ = qkv.shape
        hs = self.head_size
        nh = qkv.shape[2] // (3 * hs)                               # heads on this rank (n_head/t)
        q, k, v = qkv.split(nh * hs, axis=2)                        # 3 × (B, T, nh·hs)
        q = q.reshape(B, T, nh, hs).transpose(1, 2)                 # (B, nh, T, hs)
        k = k.reshape(B, T, nh, hs).transpose(1, 2)
        v = v.reshape(B, T, nh, hs).transpose(1, 2)
        if kv_cache is not None:                                    # generation: this layer's LayerKV
            k, v = kv_cache.update(k, v)                            # (B, nh, L + T, hs): the past, then these
        if self.kv_prefix is not None:                              # p virtual positions before every query
            k, v = self.kv_prefix(k, v)                             # (B, nh, p + Tk, hs)
        # selective: keep q, k, v and recompute the scores in backward (the 5as/h term is never held)
        y = checkpoint(self.core, q, k, v, cpu=self.recompute_cpu) if self.recompute_core else self.core(q, k, v)
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

    def __init__(self, cfg: GPTConfig, layers: Layers, init: _Init, prefix: str, seed: int, layer_id: int = 0):
        super().__init__()
        self.ln_1 = _layer_norm(layers, init, prefix + "ln_1.", cfg.n_embd, cfg.bias)
        self.attn = CausalSelfAttention(cfg, layers, init, prefix + "attn.", seed)
        self.ln_2 = _layer_norm(layers, init, prefix + "ln_2.", cfg.n_embd, cfg.bias)
        # the factory decides: a mixture of experts in this block (minidist.moe), or the dense MLP
        moe = layers.moe_mlp(cfg, layer_id, init, prefix + "mlp.", seed + 2, 0.02 / math.sqrt(2 * cfg.n_layer))
        self.mlp = moe if moe is not None else MLP(cfg, layers, init, prefix + "mlp.", seed + 2)

    def forward(self, x, kv_cache=None):
        x = x + self.attn(self.ln_1(x), kv_cache)
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
        self.h = ModuleList([Block(cfg, layers, init, f"transformer.h.{i}.", seed + 10 * (i + 1), i) for i in layer_ids],
                            names=layer_ids)
        if post:
            self.ln_f = _layer_norm(layers, init, "transformer.ln_f.", C, cfg.bias)


@dataclasses.dataclass(frozen=True)
class Recompute:
    """Which activations the blocks recompute in backward instead of keeping (Megatron-LM's
    ``recompute_granularity`` / ``recompute_method`` / ``recompute_num_layers``; the config's
    ``activation_checkpointing`` section):

    * ``granularity`` "none"; "selective": the attention core of every block (Korthikanti et
      al. 2022, §5); "full": whole blocks, keeping only their inputs;
    * ``method`` (full only) "uniform": every ``num_layers`` consecutive blocks form one
      checkpointed unit; "block": the first ``num_layers`` blocks of each chunk are
      checkpointed one by one, the others keep their activations;
    * ``cpu``: the checkpoints wait in the host pool; ``partition`` (full only, blocks'
      inputs replicated over tp): each tp rank keeps 1/t of them (:mod:`minidist.recompute`).
    """

    granularity: str = "none"
    method: str = "uniform"
    num_layers: int = 1
    cpu: bool = False             # DeepSpeed's cpu_checkpointing: checkpoints in the host pool
    partition: object = None      # DeepSpeed's partition_activations: a CheckpointPartition over tp

    def units(self, layer_ids: list) -> list:
        """``[(layer ids, checkpointed?)]`` in order for the blocks of one chunk."""
        k = self.num_layers
        if self.granularity != "full":
            return [([i], False) for i in layer_ids]
        if self.method == "block":
            return [([i], j < k) for j, i in enumerate(layer_ids)]
        return [(layer_ids[j:j + k], True) for j in range(0, len(layer_ids), k)]


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
        self.recompute = Recompute()
        full = None
        if layers.size > 1 or not whole or layers.expert_parallel is not None:
            # the one-rank values, built in an empty context: no device is active there, so they
            # are not charged to this rank; only this rank's slices become Parameters
            full = contextvars.Context().run(lambda: GPT(config, seed=seed, dtype=dtype).state_dict())
        self.transformer = Transformer(config, layers, _Init(seed, dtype, full), seed, self.layer_ids,
                                       pre_process, post_process)
        for name, p in self._named_parameters_all(""):
            p.name = name

    def set_recompute(self, recompute: Recompute) -> "GPT":
        """Choose what backward recomputes (see :class:`Recompute`); values never change."""
        self.recompute = recompute
        for i in self.layer_ids:
            attn = self.transformer.h[i].attn
            attn.recompute_core = recompute.granularity == "selective"
            attn.recompute_cpu = recompute.cpu
        return self

    # -- the three steps ----------------------------------------------------------------------
    def embed(self, idx, start: int = 0):
        """Token ids (B, T) at positions ``start`` … ``start + T − 1`` (``start``: the positions a
        KV cache already holds) → the residual stream (B, T, C), this rank's T/t under SP."""
        ids = idx.data if isinstance(idx, Tensor) else np.asarray(idx)
        if ids.ndim != 2:
            raise ValueError(f"GPT expects token ids of shape (batch, time), got {ids.shape}")
        T = ids.shape[1]
        if start + T > self.config.block_size:
            raise ValueError(f"sequence length {start + T}{f' ({start} cached + {T} new)' if start else ''} exceeds "
                             f"block_size {self.config.block_size}; raise model.block_size or shorten data.seq_len")
        tr = self.transformer
        ids, pos = self.layers.context_tokens(ids, start)          # all T, or this cp rank's T/cp and their positions
        x = self.layers.scatter_tokens(tr.wte(ids) + tr.wpe(pos))  # (B, T, C)
        return tr.drop(x)

    def blocks(self, x, layer_ids=None, hidden: list | None = None, kv_cache: KVCache | None = None):
        """Run the blocks ``layer_ids`` (default: all this model holds); append each output
        to ``hidden`` (as (B, T, C)) when a list is given. Under full recomputation each
        checkpointed unit keeps only its input (a unit is one block when ``hidden`` is asked).
        With a ``kv_cache`` (generation: no backward, nothing to recompute) block i reads and
        extends ``kv_cache[i]``."""
        ids = self.layer_ids if layer_ids is None else list(layer_ids)
        recompute = self.recompute
        if kv_cache is not None:
            recompute = Recompute()
        if hidden is not None and recompute.granularity == "full":
            recompute = dataclasses.replace(recompute, num_layers=1) if recompute.method == "uniform" else recompute
        for unit, saved in recompute.units(ids):
            blocks = [self.transformer.h[i] for i in unit]
            if kv_cache is not None:
                x = blocks[0](x, kv_cache[unit[0]])                 # one block per unit, none recomputed
            elif saved:
                x = checkpoint(blocks[0] if len(blocks) == 1 else _Chain(blocks), x, cpu=recompute.cpu,
                               partition=recompute.partition)
            else:
                x = blocks[0](x)
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

    def forward(self, idx, targets=None, return_hidden: bool = False, kv_cache: KVCache | None = None,
                logits_to_keep: int = 0):
        """``kv_cache``: a :class:`~minidist.inference.KVCache` that ``idx`` continues (its
        positions start after the cached ones) and that every attention extends.
        ``logits_to_keep`` (Hugging Face's name): without targets, only the last so many
        positions' logits (generation needs one); 0 keeps them all."""
        T = np.shape(idx.data if isinstance(idx, Tensor) else idx)[-1]
        start = len(kv_cache) if kv_cache is not None else 0
        with self.layers.sequence(T):
            hidden = [] if return_hidden else None
            x = self.blocks(self.embed(idx, start), hidden=hidden, kv_cache=kv_cache)
            keep = logits_to_keep if targets is None and 0 < logits_to_keep < T else 0
            if keep and x.shape[1] == T:
                x = x[:, T - keep:]                                 # the head on the last positions only
            logits, loss = self.head(x, targets)
            if loss is not None:
                loss = self.add_moe_losses(loss)
            if keep and logits.shape[1] > keep:                     # under SP the head ran on every position
                logits = logits[:, T - keep:]
        if return_hidden:
            return logits, loss, hidden
        return logits, loss

    def add_moe_losses(self, loss):
        """The language-model loss plus each MoE layer's aux and z losses of this forward (minidist.moe)."""
        for i in self.layer_ids:
            mlp = self.transformer.h[i].mlp
            if getattr(mlp, "loss", None) is not None:
                loss = loss + mlp.loss
        return loss

    def generate(self, idx, max_new_tokens: int, temperature: float = 1.0, top_k: int | None = None,
                 use_cache: bool = True, seed: int | None = None):
        """``idx`` (B, P) followed by ``max_new_tokens`` sampled tokens, (B, P + n) (nanoGPT's
        ``generate``): greedy when ``temperature`` is 0, ``top_k`` keeps the k likeliest,
        ``use_cache`` keeps the keys and values of past positions (prefill, then one position
        per token), ``seed`` makes the draws repeatable. See :mod:`minidist.inference`."""
        return generate(self, idx, max_new_tokens, temperature, top_k, use_cache, seed)


class _Chain(Module):
    """Consecutive blocks as one checkpointed unit (``method`` "uniform", ``num_layers`` > 1)."""

    def __init__(self, blocks):
        super().__init__()
        self.units = ModuleList(blocks)

    def forward(self, x):
        for block in self.units:
            x = block(x)
        return x


def one_rank_parameters(config: GPTConfig) -> dict:
    """name → parameter of a one-rank model of ``config``, built off any device: the shape and
    split of every parameter, for a rank that holds only part of the model (read them, do not
    change them: the model is built once per config)."""
    return dict(_one_rank_model(tuple(dataclasses.astuple(config))).named_parameters())


@functools.lru_cache(maxsize=8)
def _one_rank_model(fields: tuple) -> "GPT":
    # thread-safe for the in-process ranks; a few configs at most are in use at once
    return contextvars.Context().run(lambda: GPT(GPTConfig(*fields)))


def one_rank_shapes(config: GPTConfig) -> dict:
    """name → shape of every parameter of the one-rank model of ``config``."""
    return {name: tuple(p.shape) for name, p in one_rank_parameters(config).items()}
