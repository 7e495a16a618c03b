"""Generation with a KV cache: prefill once, then one position per token.

A GPT generates a token by running the context and sampling from the last position's
logits. Without a cache every new token re-runs the whole context: token n costs a forward
over n positions. But the keys and values of the earlier positions never change (causal
attention: position t depends only on positions ≤ t), so inference keeps them — the *KV
cache* — and each later step runs only the new position, its query attending to every
cached key (Pope et al. 2022, "Efficiently Scaling Transformer Inference", §2; Hugging
Face's ``past_key_values``). Generation therefore has two phases, separate spans on the
device's timeline (:meth:`minidist.device.Device.phase`):

* **prefill**: one forward over the prompt's P positions fills the cache;
* **decode**: one forward over one position per new token, attending to the L cached ones.

What the cache costs and saves, per sequence (checked by tests/test_inference.py):

* memory: every layer keeps a key and a value of n_embd numbers per position —
  ``2 · n_layer · n_embd · w`` bytes per token (w bytes per element), its own memory
  category ``kv_cache``; under tensor parallelism each rank keeps its n_head/t heads, 1/t;
* FLOPs (:func:`forward_matmul_flops`): a decode step does ``2·N_w`` (every weight matrix of
  the blocks once; N_w = 12·n_layer·n_embd², Kaplan et al. 2020's non-embedding N less its
  biases and LayerNorms) + ``2·n_embd·vocab`` (the tied head, last position only)
  + ``4·n_layer·L·n_embd`` (QKᵀ and P·V against L keys). Without the cache a token re-runs
  L positions: ``2·N_w·L + 2·n_embd·vocab + 4·n_layer·L²·n_embd``. (Kaplan's Table 1 writes
  the attention as ``2·n_layer·n_ctx·d_attn`` per token: the same count averaged over a causal
  window, where a token attends to (n_ctx + 1)/2 positions on average.)

The positions are learned (GPT-2's ``wpe``), so a cached key belongs to its position: once
the context reaches ``block_size`` the window cannot slide inside the cache. Every token
after that re-runs the last ``block_size`` positions (a new prefill, as nanoGPT's crop does
without a cache), which keeps the tokens equal to generation without the cache.
"""
from __future__ import annotations

import contextlib

import numpy as np

from . import functional as F
from .autocast import autocast_dtype
from .device import current_device
from .memory import nbytes
from .moe import dropless
from .tensor import Tensor, no_grad


class LayerKV:
    """The keys and values one attention layer has seen: ``k``, ``v`` of shape (B, nh, L, hs),
    nh this rank's heads (n_head/t under tensor parallelism). They grow by concatenation, as
    Hugging Face's ``DynamicCache`` does, and are charged to the device under ``kv_cache``
    (at the autocast format's size, 2 bytes, when they were computed under fp16/bf16)."""

    def __init__(self):
        self.k = self.v = None
        self._device = self._handle = None

    def __len__(self) -> int:
        return 0 if self.k is None else self.k.shape[2]

    def update(self, k: Tensor, v: Tensor) -> tuple:
        """Append this step's keys and values (B, nh, T, hs); return all of them (B, nh, L + T, hs)."""
        if self.k is not None:
            k, v = F.concat([self.k, k], axis=2), F.concat([self.v, v], axis=2)   # (B, nh, L + T, hs)
        dev = current_device()
        if dev is not None:
            fmt = autocast_dtype() if k.data.dtype.kind == "f" else None
            # the grown arrays are allocated before the old ones are freed (torch.cat's peak too)
            handle = dev.memory.alloc(nbytes(k.data, fmt) + nbytes(v.data, fmt), "kv_cache", "keys and values")
            self.free()
            self._device, self._handle = dev, handle
        self.k, self.v = k, v
        return k, v

    def free(self) -> None:
        if self._device is not None:
            self._device.memory.free(self._handle)
        self._device = self._handle = None

    def nbytes(self) -> int:
        return 0 if self.k is None else self.k.data.nbytes + self.v.data.nbytes


class KVCache:
    """One :class:`LayerKV` per layer (``cache[i]``, created on first use): what the attention
    of :mod:`minidist.model` reads and extends when ``model(idx, kv_cache=cache)`` runs."""

    def __init__(self):
        self.layers: dict = {}

    def __getitem__(self, layer_id: int) -> LayerKV:
        return self.layers.setdefault(layer_id, LayerKV())

    def __len__(self) -> int:
        """Positions held (the same in every layer)."""
        return len(next(iter(self.layers.values()))) if self.layers else 0

    def clear(self) -> None:
        """Drop every key and value and give their memory back."""
        for layer in self.layers.values():
            layer.free()
        self.layers.clear()


def sample(logits, temperature: float = 1.0, top_k: int | None = None, rng=None) -> np.ndarray:
    """The next token of each sequence from its last position's logits (B, V), as nanoGPT:
    argmax when ``temperature`` is 0 (greedy); otherwise softmax(logits / temperature) over the
    ``top_k`` largest (ties kept), drawn by inverting the cumulative distribution at one
    uniform number per sequence from ``rng``."""
    logits = np.asarray(logits)                                             # (B, V)
    if temperature == 0:
        return logits.argmax(axis=-1)                                       # (B,)
    # shifted before the division: a tiny temperature sends the others to -inf, the largest stays 0
    # (logits / temperature first would overflow to inf, and inf - inf is NaN)
    with np.errstate(over="ignore"):
        z = (logits - logits.max(axis=-1, keepdims=True)) / temperature
    if top_k is not None and top_k < z.shape[-1]:
        kth = np.partition(z, z.shape[-1] - top_k, axis=-1)[:, -top_k][:, None]   # k-th largest: (B, 1)
        z = np.where(z < kth, -np.inf, z)
    p = np.exp(z - z.max(axis=-1, keepdims=True))
    cdf = np.cumsum(p, axis=-1)                                             # (B, V), unnormalised
    u = rng.random(len(z)) * cdf[:, -1]                                     # (B,)
    picked = (cdf <= u[:, None]).sum(axis=-1)                               # first index with cdf > u
    return np.minimum(picked, z.shape[-1] - 1)


def check_generate_args(max_new_tokens, temperature, top_k, seed=None) -> None:
    if not isinstance(max_new_tokens, (int, np.integer)) or isinstance(max_new_tokens, bool) or max_new_tokens < 0:
        raise ValueError(f"max_new_tokens must be an integer >= 0, got {max_new_tokens!r}")
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float, np.integer, np.floating)):
        raise ValueError(f"temperature must be a number >= 0 (0: greedy, 1: the model's distribution), "
                         f"got {temperature!r}")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0):
        raise ValueError(f"seed must be an integer >= 0 (or None: a fresh draw each call), got {seed!r}")
    if not np.isfinite(temperature) or temperature < 0:
        raise ValueError(f"temperature must be >= 0 (0: greedy, 1: the model's distribution), got {temperature!r}")
    if top_k is not None and (not isinstance(top_k, (int, np.integer)) or isinstance(top_k, bool) or top_k < 1):
        raise ValueError(f"top_k must be a positive integer (or None: every token), got {top_k!r}")


def generate(model, idx, max_new_tokens: int, temperature: float = 1.0, top_k: int | None = None,
             use_cache: bool = True, seed: int | None = None) -> np.ndarray:
    """``idx`` (B, P) token ids followed by ``max_new_tokens`` sampled ones, (B, P + n): what
    :meth:`minidist.model.GPT.generate` does (nanoGPT's and Hugging Face's arguments).

    Runs in eval mode (no dropout) under ``no_grad``, mixture-of-experts layers without
    capacity drops (:func:`minidist.moe.dropless`); the model's mode is restored. ``seed``
    seeds the sampling (the same seed gives the same tokens with and without the cache);
    under tensor parallelism every rank must draw the same token, so sampling needs one.
    On the active device each step is a ``prefill`` or ``decode`` span (:meth:`Device.phase`).
    """
    check_generate_args(max_new_tokens, temperature, top_k, seed)
    if not (model.pre_process and model.post_process and model.layer_ids == list(range(model.config.n_layer))):
        raise ValueError("this model holds one pipeline stage; generate with the whole model "
                         "(the pipeline engine's whole_model(), or one rank's GPT)")
    if seed is None and temperature > 0 and model.layers.size > 1:
        raise ValueError(f"sampling on {model.layers.size} tensor-parallel ranks needs a seed, so that every rank "
                         f"draws the same token; give seed=... (or temperature=0 for greedy decoding)")
    ids = np.asarray(idx.data if isinstance(idx, Tensor) else idx)
    if ids.ndim != 2 or ids.shape[1] == 0:
        raise ValueError(f"generate expects a prompt of token ids of shape (batch, time) with time >= 1, "
                         f"got shape {ids.shape}")
    idx = ids.astype(np.int64)
    vocab = model.config.vocab_size
    if ids.size and (ids.dtype.kind not in "iuf" or not np.array_equal(idx, ids) or idx.min() < 0 or idx.max() >= vocab):
        raise ValueError(f"generate expects token ids, integers in [0, vocab_size = {vocab}), got {ids.dtype} "
                         f"values from {ids.min()!r} to {ids.max()!r}")
    rng = np.random.default_rng(seed)
    dev = current_device()
    block = model.config.block_size
    cache = KVCache() if use_cache else None
    was_training = model.training
    model.eval()
    try:
        with no_grad(), dropless(model):      # MoE: no capacity drops, else a cache would change the tokens
            for step in range(max_new_tokens):
                L = idx.shape[1]
                if cache is not None and 0 < len(cache) == L - 1 and L <= block:
                    name, context = "decode", idx[:, -1:]                   # the one position not yet cached
                else:                                                       # the whole window
                    name, context = ("decode" if cache is None and step else "prefill"), idx[:, -block:]
                    if cache is not None:
                        cache.clear()                                       # a cached key belongs to its position
                with (dev.phase(name, step=step, tokens=context.shape[1], context=min(L, block),
                                use_cache=use_cache) if dev is not None else contextlib.nullcontext({})) as span:
                    logits, _ = model(context, kv_cache=cache, logits_to_keep=1)     # (B, 1, V)
                    nxt = sample(logits.data[:, -1, :], temperature, top_k, rng)     # (B,)
                    span["kv_cache_bytes"] = (dev.memory.current["kv_cache"] if dev is not None else 0)
                idx = np.concatenate([idx, nxt[:, None].astype(np.int64)], axis=1)
    finally:
        if cache is not None:
            cache.clear()
        if was_training:
            model.train()
    return idx


# -- what the cache costs and saves ------------------------------------------------------------
def weight_matrix_parameters(config) -> int:
    """N_w: the elements of every weight matrix of the blocks (c_attn, attn.c_proj, c_fc,
    mlp.c_proj: 12·n_embd² per layer) — the parameters a token multiplies once per forward."""
    return 12 * config.n_layer * config.n_embd ** 2


def non_embedding_parameters(config) -> int:
    """Kaplan et al. 2020's N: every parameter but the token and position tables (the LM
    head is tied to the token table): N_w plus the biases and LayerNorms."""
    C, bias = config.n_embd, config.bias
    per_layer = 12 * C * C + (4 * C if bias else 2 * C) + ((3 * C + C + 4 * C + C) if bias else 0)
    return config.n_layer * per_layer + (2 * C if bias else C)


def forward_matmul_flops(config, tokens: int, context: int, batch: int = 1) -> dict:
    """The matmul FLOPs of one generation forward over ``tokens`` new positions that attend
    to ``context`` positions (a decode step: 1 and L; a prefill, or a step without the cache:
    L and L — the engine computes every score, masked or not), the head on the last position
    only. Term → FLOPs; their sum is what the device counts (tests/test_inference.py)."""
    C, V = config.n_embd, config.vocab_size
    return {"2·N_w per position": batch * 2 * weight_matrix_parameters(config) * tokens,
            "tied head 2·n_embd·vocab": batch * 2 * C * V,
            "attention 4·n_layer·positions·context·n_embd": batch * 4 * config.n_layer * tokens * context * C}


def kv_cache_bytes_per_token(config, bytes_per_element: int, tp: int = 1) -> int:
    """2 (a key and a value) · n_layer · n_embd · w bytes per position of one sequence, 1/t of it per
    tensor-parallel rank."""
    return 2 * config.n_layer * config.n_embd * bytes_per_element // tp


def bytes_sent_in(log, span: dict) -> int:
    """Bytes a rank's message log (:class:`minidist.distributed.log.MessageLog`) says it sent
    inside one phase span (``t_start <= message start < t_end`` on the simulated clock)."""
    return sum(e.nbytes for e in log.entries
               if e.direction == "send" and span["t_start"] <= e.t_start < span["t_end"])
