"""Prefix-tuning and P-tuning v2: trainable key/value positions in every attention layer.

Both methods put ``p`` virtual positions in front of every layer's keys and values (Li &
Liang 2021 §4; PEFT's ``num_virtual_tokens``): each query attends to them and to the real
positions before it. They are not tokens — no embedding, no position, nothing at the
input — just ``p`` key vectors and ``p`` value vectors per layer, so the stored prefix is
``2·L·p·h`` numbers (h = n_embd, all heads side by side).

* **P-tuning v2** (Liu et al. 2022; PEFT's ``prefix_projection: false``): those ``2·L·p·h``
  numbers are the trainable parameters (:class:`KVPrefix`, one per layer).
* **Prefix-tuning** (Li & Liang 2021 §4.3; ``prefix_projection: true``): optimising them
  directly was unstable, so during training they are produced by a reparameterisation,
  ``P = MLP(P′)``: a smaller embedding ``P′`` (p × k, k = ``encoder_hidden_size``) through
  ``Linear(k, k) → tanh → Linear(k, 2·L·h)`` (:class:`PrefixEncoder`, PEFT's layout). While
  training the trainable parameters are ``p·k + (k² + k) + (k·2·L·h + 2·L·h)``; after
  training :func:`drop_reparameterization` evaluates the MLP once and keeps only ``P``, the
  same ``2·L·p·h`` as P-tuning v2.

**Where it enters**: the attention's ``kv_prefix`` hook (:mod:`minidist.model`), called right
after the KV cache (so generation caches only real positions and puts the prefix before
them). With ``Tk = p + T`` keys and T queries the causal mask is aligned at the bottom right
(:mod:`minidist.ops.attention`), so every query sees all p prefix positions.

**Cost**: attention's scores grow from T×T to T×(p + T) per head, and K, V from T to p + T
positions: attention saves ``w·B·(2·p·h + n_head·T·p)`` more bytes per layer (its K and V
rows, one more column of probabilities per prefix position) and costs ``4·p·h`` more
forward FLOPs per token and layer.
"""
from __future__ import annotations

import numpy as np

from .. import functional as F
from ..layers import mark
from ..nn import Linear, Module
from ..tensor import Parameter, no_grad


def prepend(prefix, k):
    """``prefix`` (p, h) in front of ``k`` (B, nh, T, hs): (B, nh, p + T, hs)."""
    B, nh, T, hs = k.shape
    p = prefix.shape[0]
    pk = prefix.reshape(1, p, nh, hs).transpose(1, 2)               # (1, nh, p, hs): heads apart
    pk = pk + np.zeros((B, 1, 1, 1), k.dtype)                       # (B, nh, p, hs): the same for every sequence
    return F.concat([pk, k], axis=2)                                # (B, nh, p + T, hs)


class KVPrefix(Module):
    """One layer's ``p`` trainable key and value vectors (P-tuning v2), (p, h) each."""

    def __init__(self, key: np.ndarray, value: np.ndarray):
        super().__init__()
        self.key, self.value = Parameter(key), Parameter(value)
        mark(self.key, adapter=True)
        mark(self.value, adapter=True)

    @classmethod
    def random(cls, p: int, h: int, rng, dtype, std: float = 1.0) -> "KVPrefix":
        """Drawn N(0, std²), as PEFT's ``nn.Embedding`` starts them."""
        return cls(rng.normal(0.0, std, (p, h)).astype(dtype), rng.normal(0.0, std, (p, h)).astype(dtype))

    def forward(self, k, v):
        return prepend(self.key, k), prepend(self.value, v)


class PrefixEncoder(Module):
    """Li & Liang's reparameterisation: ``P′`` (p, k) → Linear(k, k) → tanh → Linear(k, 2·L·h),
    every layer's key and value prefixes at once (PEFT's ``PrefixEncoder`` with
    ``prefix_projection``). Registered once, on the model (``prefix_encoder``)."""

    def __init__(self, p: int, k: int, n_layer: int, h: int, rng, dtype, std: float = 1.0):
        super().__init__()
        self.n_layer, self.h = n_layer, h
        self.embedding = Parameter(rng.normal(0.0, std, (p, k)).astype(dtype))
        self.mlp_in = _torch_linear(k, k, rng, dtype)
        self.mlp_out = _torch_linear(k, 2 * n_layer * h, rng, dtype)
        for q in self.parameters():
            mark(q, adapter=True)
        self._out = None

    def forward(self):
        return self.mlp_out(F.tanh(self.mlp_in(self.embedding)))   # (p, k) → (p, k) → (p, 2·L·h)

    def layer(self, i: int, first: bool):
        """Layer ``i``'s (key, value) prefixes, (p, h) each. The first layer of a forward runs
        the MLP; the others take their slice of its output (one MLP per forward)."""
        if first or self._out is None:
            self._out = self()
        P = self._out                                               # (p, 2·L·h): [k_0 | v_0 | k_1 | v_1 …]
        lo = 2 * i * self.h
        return P[:, lo:lo + self.h], P[:, lo + self.h:lo + 2 * self.h]


def _torch_linear(n_in: int, n_out: int, rng, dtype) -> Linear:
    """A Linear with torch's default initialisation, U(−1/√n_in, 1/√n_in) for W and b."""
    bound = 1.0 / np.sqrt(n_in)
    return Linear.from_arrays(rng.uniform(-bound, bound, (n_in, n_out)).astype(dtype),
                              rng.uniform(-bound, bound, n_out).astype(dtype))


class ProjectedKVPrefix(Module):
    """Layer ``i``'s prefixes, read from the model's :class:`PrefixEncoder` (not a child: the
    encoder is registered once, on the model)."""

    def __init__(self, encoder: PrefixEncoder, i: int, first: bool):
        super().__init__()
        object.__setattr__(self, "encoder", encoder)
        self.i, self.first = i, first

    def forward(self, k, v):
        key, value = self.encoder.layer(self.i, self.first)
        return prepend(key, k), prepend(value, v)


def add_prefixes(model, p: int, projection: bool, k: int, rng, dtype) -> None:
    """A ``kv_prefix`` in every attention layer of ``model``: trained directly (P-tuning v2) or
    produced by a :class:`PrefixEncoder` on the model (prefix-tuning)."""
    cfg = model.config
    ids = list(model.layer_ids)
    if projection:
        model.prefix_encoder = PrefixEncoder(p, k, cfg.n_layer, cfg.n_embd, rng, dtype)
    for i in ids:
        attn = model.transformer.h[i].attn
        attn.kv_prefix = ProjectedKVPrefix(model.prefix_encoder, i, i == ids[0]) if projection \
            else KVPrefix.random(p, cfg.n_embd, rng, dtype)


def drop_reparameterization(model) -> None:
    """After prefix-tuning: evaluate the MLP once, keep each layer's prefixes as plain
    :class:`KVPrefix` parameters and delete the encoder (Li & Liang §4.3: "once training is
    complete, these reparametrization parameters can be dropped")."""
    encoder = model.__dict__.get("prefix_encoder")
    if encoder is None:
        return
    with no_grad():
        P = encoder().data                                          # (p, 2·L·h)
    h = encoder.h
    for i in model.layer_ids:
        attn = model.transformer.h[i].attn
        attn.kv_prefix = KVPrefix(P[:, 2 * i * h:(2 * i + 1) * h].copy(), P[:, (2 * i + 1) * h:(2 * i + 2) * h].copy())
    del model._modules["prefix_encoder"]
    del model.__dict__["prefix_encoder"]
