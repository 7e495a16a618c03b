"""Parameter count, training FLOPs and training time.

**Parameters of a GPT-2 style model** (nanoGPT layout, tied LM head, learned positions,
L layers, hidden h, vocabulary V, context T): per block the attention ``c_attn`` (h×3h + 3h)
and ``c_proj`` (h×h + h), the MLP ``c_fc`` (h×4h + 4h) and ``c_proj`` (4h×h + h), and two
LayerNorms (2·2h) give 12h² + 13h; then token and position embeddings V·h + T·h and the
final LayerNorm 2h::

    N = 12·L·h² + 13·L·h + V·h + T·h + 2·h            (with biases)
    N = 12·L·h² +  2·L·h + V·h + T·h +   h            (bias=False: no Linear/LayerNorm biases)

**FLOPs** (Kaplan et al. 2020 §2.1; the notes' "6ND"): a matmul with a weight of N
elements costs 2N FLOPs per token forward and 4N backward (input gradient + weight
gradient), so training costs ``6·N·D`` for D tokens. Attention's QKᵀ and (·V) matmuls add
per token and layer 2·2·s·h forward, hence ``12·L·h·s`` for training (PaLM, Chowdhery
et al. 2022, Appendix B: 6N + 12·L·H·Q·T, with H·Q = h). Recomputation adds forward work:
full checkpointing repeats the whole forward (8N + 16·L·h·s per token, the notes' "≈ 8ND"),
selective recomputation repeats only the attention core (6N + 16·L·h·s).

Which N? This module uses the N you give. For a model built from its shape it is the full
count above, embeddings included, as the GPT-3 "175B" is: with a tied LM head the token
embedding *is* a matmul weight (the logits), while the position-embedding lookup costs no
FLOPs — an overcount of T·h, negligible. Kaplan's scaling laws use the non-embedding count
instead; :func:`gpt2_param_count` returns both.

**Time**: total FLOPs / (GPUs · peak FLOP/s · MFU), where MFU (model FLOPs utilisation,
Chowdhery et al. 2022) is the fraction of peak a real run sustains, typically 0.3–0.55.
"""
from __future__ import annotations

from ..defaults import DEFAULT_DEVICE
from ..device import get_spec
from .activations import CHECKPOINTING


def gpt2_param_count(layers: int, hidden: int, vocab: int, block_size: int, bias: bool = True) -> dict:
    """Parameters of a nanoGPT model with tied embeddings: total, embeddings, non-embedding."""
    L, h = layers, hidden
    if bias:
        per_block = 12 * h * h + 13 * h
        final_ln = 2 * h
    else:
        per_block = 12 * h * h + 2 * h               # LayerNorm weights only
        final_ln = h
    embeddings = vocab * h + block_size * h
    non_embedding = L * per_block + final_ln
    return {"total": non_embedding + embeddings, "embeddings": embeddings,
            "non_embedding": non_embedding, "per_block": per_block}


def training_flops(params: float, tokens: float, layers: int | None = None,
                   hidden: int | None = None, seq: int | None = None,
                   checkpointing: str = "none", recomputed_fraction: float = 1.0,
                   block_params: float | None = None) -> dict:
    """FLOPs to train ``params`` parameters on ``tokens`` tokens.

    Always returns the rules of thumb ``flops_6nd`` and ``flops_8nd``. With the shape
    (``layers``, ``hidden``, ``seq``) also the count with attention, ``flops`` (what this
    step costs with the given ``checkpointing``), and its parts. ``recomputed_fraction``:
    the share of layers full recomputation re-runs (``block`` method: k of L);
    ``block_params``: the weights a recomputed forward multiplies (the blocks' matmul
    weights, 12·h² per layer, when known; else all ``params``, the 8·N·D rule).
    """
    if checkpointing not in CHECKPOINTING:
        raise ValueError(f"unknown checkpointing {checkpointing!r}; choose one of {', '.join(CHECKPOINTING)}")
    n, d = float(params), float(tokens)
    out = {"params": n, "tokens": d, "checkpointing": checkpointing,
           "flops_6nd": 6 * n * d, "flops_8nd": 8 * n * d}
    # forward passes of the dense (weight) matmuls and of the attention core, per token:
    # 1 fwd + backward (2 fwd-equivalents) + the recomputed forward, if any
    f = recomputed_fraction if checkpointing == "full" else 0.0
    recomputed = float(block_params if block_params is not None else n) * f
    attn_passes = {"none": 3, "selective": 4, "full": 3 + f}[checkpointing]
    dense = 2 * n * 3 + 2 * recomputed                # 6N, or 8N when every weight is recomputed
    out["dense_per_token"] = dense
    if layers is not None and hidden is not None and seq is not None:
        attention = 4 * layers * hidden * seq * attn_passes   # 12·L·h·s or 16·L·h·s
        out["attention_per_token"] = attention
        out["per_token"] = dense + attention
    else:
        out["attention_per_token"] = None
        out["per_token"] = dense
    out["flops"] = out["per_token"] * d
    out["model_flops"] = (6 * n + (12 * layers * hidden * seq if out["attention_per_token"] else 0)) * d
    out["recompute_flops"] = out["flops"] - out["model_flops"]
    return out


def training_time(flops: float, n_gpus: int, gpu: str = DEFAULT_DEVICE, mfu: float = 0.4,
                  peak_flops: float | None = None) -> dict:
    """Wall-clock time for ``flops`` on ``n_gpus`` devices of preset ``gpu`` at utilisation ``mfu``.

    ``peak_flops`` overrides the preset's rate (FLOP/s per device).
    """
    if not 0 < mfu <= 1:
        raise ValueError(f"mfu must be in (0, 1], got {mfu!r} (typical: 0.3-0.55)")
    if n_gpus < 1:
        raise ValueError(f"n_gpus must be at least 1, got {n_gpus!r}")
    peak = float(peak_flops) if peak_flops else get_spec(gpu).flops
    seconds = flops / (n_gpus * peak * mfu)
    return {"flops": flops, "n_gpus": n_gpus, "gpu": gpu if not peak_flops else "custom",
            "peak_flops_per_gpu": peak, "mfu": mfu, "seconds": seconds,
            "hours": seconds / 3600, "days": seconds / 86400}
