"""Context parallelism in numbers: what each rank sends per step, and the activations it keeps.

Notation as in :mod:`.activations`: s sequence length, b micro-batch, h hidden size, a heads,
L layers, t tensor-parallel degree (each rank's attention has h/t columns and a/t heads),
cp the context-parallel degree; ``n = b · (s/cp) · h/t`` elements is one of q, k, v on one rank.

Per layer and micro-batch, per rank (elements):

==============================  ======================================  ====================
algorithm                       forward                                 backward
==============================  ======================================  ====================
ring (Liu et al. 2023)          K and V, cp − 1 times: 2·(cp − 1)·n     K, V again and dK, dV
                                                                        back: 4·(cp − 1)·n †
Ulysses (Jacobs et al. 2023)    4 all-to-alls (q, k, v, out), each      the same four:
                                (cp − 1)/cp · n: 4·(cp − 1)/cp·n        4·(cp − 1)/cp·n
==============================  ======================================  ====================

† In bytes, K, V, q, the outputs and their gradients travel in the activations' format (2
bytes under fp16/bf16), but the ring's partial dK, dV are fp32 accumulators: ring
implementations sum each rank's block contribution into a float32 dK, dV and pass that on,
casting to the 16-bit format only at the owner (zhuzilin/ring-flash-attention,
``ring_flash_attn_backward``). Under mixed precision a ring layer's backward sends
``2·(cp − 1)·n·2 + 2·(cp − 1)·n·4`` bytes: three times its forward, not twice. Ulysses' backward
all-to-alls carry activation gradients, in the activations' format.

Ring sends ``cp/2`` times Ulysses' elements forward and ``3·cp/4`` times over a step (equal
forward at cp = 2): as cp grows Ulysses' bytes per rank fall as 1/cp while ring's stay near
``2·b·s·h``, but ring works for any number of heads, overlaps its sends with the blocks'
matmuls and never gathers a whole sequence of a head on one rank. Under activation
recomputation the recomputed forward sends its bytes again.

Activations per rank (Korthikanti et al. 2022's terms, :func:`.activations.layer_activation_terms`):
every term linear in s is taken at s/cp. Ulysses keeps the one-rank attention core for a/cp
heads over the whole sequence: every term ÷ cp. Ring attention keeps no (s × s) scores at all
(the online softmax): the "selective" terms at s/cp, plus its running log-sum-exp (fp32, one
per query row and head) and, with dropout, a 1-byte mask of its queries' rows.
"""
from __future__ import annotations

from .activations import activation_memory, checkpointed_layers

ALGORITHMS = ("ring", "ulysses")


def context_problem(algorithm: str, cp: int, seq: int | None = None, heads: int | None = None,
                    tp: int = 1) -> str | None:
    """Why ``cp`` ranks cannot split this sequence (or these heads), in the trainer's words, or None."""
    if algorithm not in ALGORITHMS:
        return f"unknown context-parallel algorithm {algorithm!r}; choose one of {', '.join(ALGORITHMS)}"
    chunks = 2 * cp if algorithm == "ring" else cp
    if cp > 1 and seq and seq % chunks:
        return (f"the sequence length {seq} is not divisible by {chunks}: {algorithm} cuts it into "
                f"{'2 · cp (zigzag) chunks' if algorithm == 'ring' else 'cp chunks'}; use a multiple of {chunks}")
    if cp > 1 and algorithm == "ulysses" and heads and (heads // tp) % cp:
        return (f"Ulysses gives each rank (heads/tp)/cp heads, but {heads // tp} heads per tensor-parallel rank "
                f"are not divisible by cp = {cp}; use ring, or a cp that divides them")
    return None


def attention_elements(algorithm: str, cp: int, micro_batch: int, seq: int, hidden: int, tp: int = 1) -> dict:
    """Elements one rank sends for one layer's attention and one micro-batch:
    ``{"forward", "backward", "backward_gradients", "messages_forward", "messages_backward"}``;
    ``backward_gradients`` (part of ``backward``): the ring's partial dK, dV, which travel as
    fp32 accumulators whatever the activations' format (:func:`context_bytes_per_step`)."""
    problem = context_problem(algorithm, cp, seq)
    if problem:
        raise ValueError(problem)
    n = micro_batch * (seq // cp) * (hidden // tp)        # one of q, k, v on this rank
    if cp == 1:
        return {"forward": 0, "backward": 0, "backward_gradients": 0, "messages_forward": 0, "messages_backward": 0}
    if algorithm == "ring":
        return {"forward": 2 * (cp - 1) * n, "backward": 4 * (cp - 1) * n, "backward_gradients": 2 * (cp - 1) * n,
                "messages_forward": cp - 1, "messages_backward": 2 * (cp - 1)}
    a2a = (cp - 1) * (n // cp)                            # one all-to-all: cp − 1 blocks of n/cp
    return {"forward": 4 * a2a, "backward": 4 * a2a, "backward_gradients": 0,
            "messages_forward": 4 * (cp - 1), "messages_backward": 4 * (cp - 1)}


def context_bytes_per_step(algorithm: str, cp: int, layers: int, micro_batch: int, seq: int, hidden: int,
                           micro_batches: int = 1, bytes_per_element: int = 2, tp: int = 1,
                           checkpointing: str = "none", accumulator_bytes: int | None = None,
                           method: str = "uniform", num_layers: int = 1) -> dict:
    """Bytes one rank sends per optimizer step for context parallelism: every layer's
    attention, forward and backward, for every micro-batch (and the recomputed forward
    under activation checkpointing). ``bytes_per_element``: the activations' format on the
    wire (q, k, v, outputs and their gradients; 2 under fp16/bf16). ``accumulator_bytes``:
    the ring's partial dK, dV, by default ``max(bytes_per_element, 4)`` — fp32 accumulators
    under mixed precision, the model's own dtype otherwise. The forward runs again in every
    layer under ``selective``, and under ``full`` in the layers Megatron's ``method`` and
    ``num_layers`` checkpoint (``block``: the first ``num_layers`` only;
    :func:`.activations.checkpointed_layers`)."""
    e = attention_elements(algorithm, cp, micro_batch, seq, hidden, tp)
    acc = max(bytes_per_element, 4) if accumulator_bytes is None else accumulator_bytes
    recomputed = e["forward"] if checkpointing in ("selective", "full") else 0
    recomputed_layers = layers - checkpointed_layers(layers, checkpointing, method, num_layers)[1] \
        if checkpointing == "full" else layers
    backward = (e["backward"] - e["backward_gradients"]) * bytes_per_element + e["backward_gradients"] * acc
    per_layer = e["forward"] * bytes_per_element + backward
    return {"algorithm": algorithm, "cp": cp, "per_layer_forward": e["forward"] * bytes_per_element,
            "per_layer_backward": backward,
            "per_layer_recomputed": recomputed * bytes_per_element,
            "bytes_per_step": (per_layer * layers + recomputed * bytes_per_element * recomputed_layers)
            * micro_batches}


def context_activation_memory(seq: int, micro_batch: int, hidden: int, heads: int, layers: int, cp: int,
                              algorithm: str = "ring", tp: int = 1, sp: bool = False, checkpointing: str = "none",
                              precision_bytes: int = 2, vocab: int | None = None, dropout: bool = True) -> dict:
    """Activation bytes per rank of a context-parallel run (one pipeline stage, one micro-batch
    in flight): :func:`.activations.activation_memory` on this rank's s/cp tokens, with the
    attention core each algorithm really keeps."""
    problem = context_problem(algorithm, cp, seq, heads, tp)
    if problem:
        raise ValueError(problem)
    if algorithm == "ulysses" or checkpointing == "full":
        # Ulysses: (a/cp) heads over s positions is 1/cp of every term; full: only inputs at s/cp
        whole = activation_memory(seq, micro_batch, hidden, heads, layers, tp, sp, checkpointing,
                                  precision_bytes, vocab=vocab)
        return {**whole, "cp": cp, "algorithm": algorithm, "per_layer": whole["per_layer"] / cp,
                "embedding_and_logits": whole["embedding_and_logits"] / cp, "total": whole["total"] / cp}
    local = activation_memory(seq // cp, micro_batch, hidden, heads, layers, tp, sp, "selective",
                              precision_bytes, vocab=vocab)
    rows = (heads // tp) * (seq // cp) * micro_batch      # query rows of this rank, over its heads
    core = 0 if checkpointing == "selective" else 4 * rows + (rows * seq if dropout else 0)   # fp32 lse, mask rows
    per_layer = local["per_layer"] + core
    return {**local, "seq": seq, "cp": cp, "algorithm": algorithm, "checkpointing": checkpointing,
            "per_layer": per_layer, "attention_statistics_per_layer": core,
            "total": per_layer * layers + local["embedding_and_logits"]}
