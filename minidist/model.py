"""GPT-2 (Radford et al. 2019) in minidist, with nanoGPT's structure and parameter names.

Pre-LayerNorm blocks: x = x + attn(ln_1(x)); x = x + mlp(ln_2(x)); learned positional
embeddings; final ln_f; LM head tied to the token embedding ``wte``. Linear weights are
stored (in_features, out_features) so every layer computes y = x @ W + b.
"""
from __future__ import annotations

import dataclasses
import math

import numpy as np

from . import functional as F
from .nn import Dropout, Embedding, LayerNorm, Linear, Module, ModuleList
from .tensor import Tensor


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


class CausalSelfAttention(Module):
    def __init__(self, cfg: GPTConfig, rng, dtype, seed):
        super().__init__()
        proj_std = 0.02 / math.sqrt(2 * cfg.n_layer)   # GPT-2's scaled init of residual projections
        self.c_attn = Linear(cfg.n_embd, 3 * cfg.n_embd, cfg.bias, rng, dtype=dtype)
        self.c_proj = Linear(cfg.n_embd, cfg.n_embd, cfg.bias, rng, std=proj_std, dtype=dtype)
        self.attn_dropout = Dropout(cfg.dropout, seed + 1)       # on the attention probabilities
        self.resid_dropout = Dropout(cfg.dropout, seed)
        self.n_head, self.n_embd = cfg.n_head, cfg.n_embd

    def forward(self, x):
        B, T, C = x.shape
        nh, hs = self.n_head, C // self.n_head
        q, k, v = self.c_attn(x).split(C, axis=2)                  # 3 × (B, T, C)
        q = q.reshape(B, T, nh, hs).transpose(1, 2)                 # (B, nh, T, hs)
        k = k.reshape(B, T, nh, hs).transpose(1, 2)
        v = v.reshape(B, T, nh, hs).transpose(1, 2)
        p = self.attn_dropout.p if self.training else 0.0
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True, dropout_p=p, rng=self.attn_dropout.rng)
        y = y.transpose(1, 2).reshape(B, T, C)                      # heads side by side again
        return self.resid_dropout(self.c_proj(y))


class MLP(Module):
    def __init__(self, cfg: GPTConfig, rng, dtype, seed):
        super().__init__()
        proj_std = 0.02 / math.sqrt(2 * cfg.n_layer)
        self.c_fc = Linear(cfg.n_embd, 4 * cfg.n_embd, cfg.bias, rng, dtype=dtype)
        self.c_proj = Linear(4 * cfg.n_embd, cfg.n_embd, cfg.bias, rng, std=proj_std, dtype=dtype)
        self.dropout = Dropout(cfg.dropout, seed)

    def forward(self, x):
        return self.dropout(self.c_proj(F.gelu(self.c_fc(x))))     # (B, T, C) → (B, T, 4C) → (B, T, C)


class Block(Module):
    def __init__(self, cfg: GPTConfig, rng, dtype, seed):
        super().__init__()
        self.ln_1 = LayerNorm(cfg.n_embd, cfg.bias, dtype=dtype)
        self.attn = CausalSelfAttention(cfg, rng, dtype, seed)
        self.ln_2 = LayerNorm(cfg.n_embd, cfg.bias, dtype=dtype)
        self.mlp = MLP(cfg, rng, dtype, seed + 2)

    def forward(self, x):
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class Transformer(Module):
    def __init__(self, cfg: GPTConfig, rng, dtype, seed):
        super().__init__()
        self.wte = Embedding(cfg.vocab_size, cfg.n_embd, rng, dtype=dtype)
        self.wpe = Embedding(cfg.block_size, cfg.n_embd, rng, dtype=dtype)
        self.drop = Dropout(cfg.dropout, seed)
        self.h = ModuleList([Block(cfg, rng, dtype, seed + 10 * (i + 1)) for i in range(cfg.n_layer)])
        self.ln_f = LayerNorm(cfg.n_embd, cfg.bias, dtype=dtype)


class GPT(Module):
    """GPT-2. ``model(idx, targets)`` → ``(logits, loss)``; ``return_hidden=True`` adds the
    list of every block's output (B, T, C), used by Patient knowledge distillation."""

    def __init__(self, config: GPTConfig | None = None, seed: int = 0, dtype=np.float32):
        super().__init__()
        self.config = config = config or GPTConfig()
        rng = np.random.default_rng(seed)
        self.transformer = Transformer(config, rng, dtype, seed)
        for name, p in self._named_parameters_all(""):
            p.name = name

    def forward(self, idx, targets=None, return_hidden: bool = False):
        ids = idx.data if isinstance(idx, Tensor) else np.asarray(idx)
        if ids.ndim != 2:
            raise ValueError(f"GPT expects token ids of shape (batch, time), got {ids.shape}")
        B, T = ids.shape
        if T > self.config.block_size:
            raise ValueError(f"sequence length {T} exceeds block_size {self.config.block_size}; "
                             f"raise model.block_size or shorten data.seq_len")
        tr = self.transformer
        x = tr.drop(tr.wte(ids) + tr.wpe(np.arange(T)))             # (B, T, C)
        hidden = []
        for block in tr.h:
            x = block(x)
            hidden.append(x)
        x = tr.ln_f(x)
        logits = F.matmul(x, tr.wte.weight.T)                       # tied head: (B, T, V)
        loss = None
        if targets is not None:
            loss = F.cross_entropy(logits.reshape(B * T, -1), np.asarray(targets).reshape(-1), ignore_index=-1)
        if return_hidden:
            return logits, loss, hidden
        return logits, loss
