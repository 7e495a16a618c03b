"""Adapters: two bottleneck layers inserted in every block (Houlsby et al. 2019).

Houlsby et al. 2019 (§2.1, their Figure 2) add a small module twice per Transformer layer —
after the attention sublayer's output projection and after the feed-forward sublayer, each
time before the residual addition — and train only those::

    adapter(h) = h + W_up · gelu(W_down · h + b_down) + b_up       W_down: (d, m), W_up: (m, d)

with a bottleneck ``m ≪ d`` (LLM-Adapters' ``bottleneck_size``). Its own skip connection and
small initial weights (Houlsby: N(0, 10⁻²), truncated; here not truncated) make it start
close to the identity, so the adapted model starts as the pretrained one. Trainable
parameters per block: two adapters of ``2·d·m + d + m`` each, ``2·(2·d·m + d + m)``.
(Houlsby et al. also train the LayerNorms; here they stay frozen, so that the count is
exactly the adapters'.)

**Where it enters**: a forward hook on the block's ``attn`` and ``mlp`` modules (torch's
``register_forward_hook``, the way adapter libraries insert themselves), with the adapter a
child of that module (``transformer.h.0.attn.adapter.down.weight``): the block's forward
is the one GPT's, untouched, and ZeRO-3 gathers the adapter with its block. Unlike LoRA an
adapter cannot be merged away: it adds its layers' latency at inference.
"""
from __future__ import annotations

import numpy as np

from .. import functional as F
from ..layers import mark
from ..nn import Linear, Module


class Adapter(Module):
    """``h + up(gelu(down(h)))``: one bottleneck adapter of width ``m`` on a ``d``-wide stream."""

    def __init__(self, d: int, m: int, rng, dtype, std: float = 1e-2):
        super().__init__()
        self.down = Linear.from_arrays(rng.normal(0.0, std, (d, m)).astype(dtype), np.zeros(m, dtype))
        self.up = Linear.from_arrays(rng.normal(0.0, std, (m, d)).astype(dtype), np.zeros(d, dtype))
        for p in self.parameters():
            mark(p, adapter=True)

    def forward(self, h):
        return h + self.up(F.gelu(self.down(h)))                   # (B, T, d) → (B, T, m) → (B, T, d)


def _after_sublayer(module, args, out):
    """The forward hook: the sublayer's output goes through its adapter."""
    return module.adapter(out)


def add_adapters(blocks, d: int, m: int, rng, dtype) -> None:
    """Insert an adapter after the attention and after the MLP of every block."""
    for block in blocks:
        for sublayer in (block.attn, block.mlp):
            sublayer.adapter = Adapter(d, m, rng, dtype)
            sublayer.register_forward_hook(_after_sublayer)
