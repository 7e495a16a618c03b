"""Activation memory: what forward keeps alive for backward, per Transformer layer.

Korthikanti et al. 2022, "Reducing Activation Recomputation in Large Transformer Models",
§4 and Table 2. Notation: s sequence length, b micro-batch size, h hidden size, a heads,
L layers, t tensor-parallel degree. With 16-bit activations and 1-byte dropout masks, one
GPT layer stores

* attention block: 11·sbh + 5·as²b bytes
    Q/K/V projection input 2sbh, Q and K for QKᵀ 4sbh, softmax output 2as²b, its dropout
    mask as²b, dropout output (for ·V) 2as²b, V 2sbh, output-projection input 2sbh,
    output dropout mask sbh;
* MLP block: 19·sbh   (first linear input 2sbh, GeLU input 8sbh, GeLU output 8sbh, mask sbh);
* two LayerNorms: 4·sbh (their inputs).

Summed: ``sbh(34 + 5as/h)`` bytes per layer. Table 2 of the paper then gives

==============================  ================================
configuration                   bytes per layer
==============================  ================================
no parallelism                  sbh (34 + 5as/h)
tensor parallel (t)             sbh (10 + 24/t + 5as/(ht))
tensor + sequence parallel      sbh/t (34 + 5as/h)
TP + selective recompute        sbh (10 + 24/t)
TP + SP + selective recompute   sbh · 34/t
full recompute                  sbh · 2   (only the layer input; sbh · 2/t under SP)
==============================  ================================

Tensor parallelism splits everything inside the attention core and MLP (24sbh + 5as²b)
but replicates the LayerNorm/dropout regions (10sbh); sequence parallelism splits those
too along the sequence. Selective recomputation drops the 5as²b attention-core terms (they
are recomputed in backward). :func:`layer_activation_bytes` adds the tensors up one by one
(for any activation width, not just 2 bytes), so the closed forms above are a check, not the
implementation.
"""
from __future__ import annotations

CHECKPOINTING = ("none", "selective", "full")


def layer_activation_terms(seq: int, micro_batch: int, hidden: int, heads: int, tp: int = 1,
                           sp: bool = False, checkpointing: str = "none",
                           precision_bytes: int = 2, mask_bytes: int = 1) -> dict:
    """Bytes per layer of each saved tensor, after tensor/sequence-parallel splitting."""
    if checkpointing not in CHECKPOINTING:
        raise ValueError(f"unknown checkpointing {checkpointing!r}; choose one of {', '.join(CHECKPOINTING)}")
    if heads % tp:
        raise ValueError(f"heads ({heads}) must be divisible by tensor-parallel degree tp ({tp})")
    s, b, h, a, p, m = seq, micro_batch, hidden, heads, precision_bytes, mask_bytes
    sbh = s * b * h
    as2b = a * s * s * b
    rep = t = tp
    if not sp:
        rep = 1                                   # LayerNorm/dropout regions replicated over TP
    if checkpointing == "full":
        # Only the layer's input is kept; everything else is recomputed from it. Under
        # sequence parallelism a rank keeps its s/t shard of it, as Megatron does (Table 2
        # writes 2sbh for the unsplit case).
        return {"layer_input": p * sbh / rep}
    terms = {
        # replicated by TP, split by SP (along s)
        "ln_1 input": p * sbh / rep,
        "ln_2 input": p * sbh / rep,
        "attention dropout mask": m * sbh / rep,
        "mlp dropout mask": m * sbh / rep,
        "c_attn input (QKV projection)": p * sbh / rep,
        "c_fc input (MLP first linear)": p * sbh / rep,
        # split by TP (heads / MLP columns)
        "Q and K": 2 * p * sbh / t,
        "V": p * sbh / t,
        "attn c_proj input": p * sbh / t,
        "GeLU input": 4 * p * sbh / t,
        "GeLU output (c_proj input)": 4 * p * sbh / t,
    }
    if checkpointing == "none":
        # the attention core, quadratic in s: recomputed instead under "selective"
        terms["softmax output"] = p * as2b / t
        terms["softmax dropout mask"] = m * as2b / t
        terms["softmax dropout output"] = p * as2b / t
    return terms


def layer_activation_bytes(*args, **kwargs) -> float:
    """Bytes one Transformer layer keeps for backward (sum of :func:`layer_activation_terms`)."""
    return float(sum(layer_activation_terms(*args, **kwargs).values()))


METHODS = ("uniform", "block")


def checkpointed_layers(layers_per_stage: int, checkpointing: str = "none", method: str = "uniform",
                        num_layers: int = 1) -> tuple[int, int]:
    """``(checkpoints kept, layers kept whole)`` of a stage under full recomputation
    (Megatron's ``recompute_method``): ``uniform`` keeps one input per ``num_layers``
    consecutive layers; ``block`` checkpoints the first ``num_layers`` layers one by one and
    keeps the others' activations. Other granularities: (0, all layers)."""
    if method not in METHODS:
        raise ValueError(f"unknown checkpointing method {method!r}; choose one of {', '.join(METHODS)}")
    if num_layers < 1:
        raise ValueError(f"checkpointing num_layers must be at least 1, got {num_layers}")
    if checkpointing != "full":
        return 0, layers_per_stage
    if method == "uniform":
        return -(-layers_per_stage // num_layers), 0
    k = min(num_layers, layers_per_stage)
    return k, layers_per_stage - k


def activation_memory(seq: int, micro_batch: int, hidden: int, heads: int, layers: int,
                      tp: int = 1, sp: bool = False, checkpointing: str = "none",
                      precision_bytes: int = 2, pp: int = 1, in_flight: float = 1.0,
                      vocab: int | None = None, method: str = "uniform", num_layers: int = 1) -> dict:
    """Activation bytes per device for one pipeline stage of ``layers/pp`` layers.

    ``in_flight`` is how many micro-batches' activations a stage holds at its peak (1
    without pipelining; see :func:`minidist.estimate.pipeline.peak_in_flight`: ``p`` for
    1F1B's first stage, ``m`` for GPipe). ``method``/``num_layers``: see
    :func:`checkpointed_layers` (``per_layer`` is then the stage's average). With ``vocab`` the embedding and output-layer
    terms of Korthikanti §4.3 are added as if this stage held both ends of the model (an
    upper bound): the embedding dropout mask, ``sbh/t`` bytes per in-flight micro-batch,
    and the final LayerNorm input, LM-head input and fp32 logits, ``4sbh/t·(1 + v/h)``.
    """
    if layers % pp:
        raise ValueError(f"layers ({layers}) must be divisible by pipeline-parallel degree pp ({pp})")
    per_layer = layer_activation_bytes(seq, micro_batch, hidden, heads, tp, sp, checkpointing,
                                       precision_bytes)
    layers_per_stage = layers // pp
    kept, whole = checkpointed_layers(layers_per_stage, checkpointing, method, num_layers)
    if checkpointing == "full":          # kept inputs, plus the layers ``block`` leaves whole
        per_layer_whole = layer_activation_bytes(seq, micro_batch, hidden, heads, tp, sp, "none", precision_bytes)
        blocks = (per_layer * kept + per_layer_whole * whole) * in_flight
        per_layer = blocks / in_flight / layers_per_stage
    else:
        blocks = per_layer * layers_per_stage * in_flight
    extra = 0.0
    if vocab:
        sbh = seq * micro_batch * hidden
        extra = sbh / tp * in_flight + 4 * sbh / tp * (1 + vocab / hidden)
    return {
        "seq": seq, "micro_batch": micro_batch, "hidden": hidden, "heads": heads,
        "layers": layers, "tp": tp, "sp": sp, "pp": pp, "checkpointing": checkpointing,
        "method": method, "num_layers": num_layers,
        "precision_bytes": precision_bytes, "in_flight_micro_batches": in_flight,
        "per_layer": per_layer, "layers_per_stage": layers_per_stage,
        "embedding_and_logits": extra,
        "total": blocks + extra,
    }
