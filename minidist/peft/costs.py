"""What each fine-tuning method costs, as closed forms of the model's shape (the formulas the
measurements are checked against: ``tests/test_peft.py``, the peft chapter of the demo).

Notation: L blocks of width h (``n_embd``), ``n_head`` heads, vocabulary V, T positions,
B sequences per micro-batch; LoRA rank r on matrices (d_in, d_out); adapter bottleneck m;
p prefix positions, k the prefix encoder's width; w bytes per element (4 in fp32, 2 in
fp16/bf16), K optimizer-state bytes per trainable element (Adam: 8, +4 for the fp32 master
in mixed precision).

* **Trainable parameters** — LoRA ``Σ r·(d_in + d_out)`` over the adapted matrices (Hu et al.
  2021 §4.1); adapters ``L·2·(2·h·m + h + m)`` (Houlsby et al. 2019 §3.6); P-tuning v2
  ``2·L·p·h``; prefix-tuning the same after the MLP is dropped, ``p·k + k² + k + 2·L·h·k +
  2·L·h`` while training (Li & Liang 2021 §4.3).
* **Model states** — frozen weights are parameters only: ``w·Ψ_frozen`` (NF4: about 4.127
  bits each, :func:`nf4_bytes`) + ``(w + K)·Ψ_trainable`` for gradients and optimizer.
* **Bytes sent per step and rank** (p ranks) — only trainable gradients travel: DDP, ZeRO-1
  and ZeRO-2 send ``2·(p−1)·⌈Ψ_t/p⌉·w`` (one bucket); ZeRO-3 still gathers the frozen
  shards, twice per micro-step, and reduce-scatters only the trainable ones:
  ``m·(p−1)·(3·S_t + 2·S_f)·w`` with ``S = Σ_units ⌈n_unit/p⌉``.
* **Matmul FLOPs per token, forward** — ``L·(24·h² + 4·(T + p)·h) + 2·V·h`` (the weights,
  the attention core over T + p keys, the tied head) plus ``2·r·(d_in + d_out)`` per LoRA
  matrix, ``8·L·h·m`` for the adapters, and the prefix encoder once per micro-batch.
  Backward's weight-gradient FLOPs are ``2·tokens·Ψ_trainable-matmul``: a frozen weight
  costs none (its input gradient is still needed).
"""
from __future__ import annotations

import math

from ..compression.nf4 import BLOCK_SIZE, DQ_BLOCK_SIZE
from ..defaults import ADAPTER, DDP, LORA, LORA_TARGETS, PREFIX_TUNING, ZERO1, ZERO2, ZERO3


def lora_matrices(n_embd: int, targets) -> list:
    """(name, d_in, d_out) of the linear layers of one block that ``target_modules`` selects."""
    h = n_embd
    shapes = {"attn.c_attn": (h, 3 * h), "attn.c_proj": (h, h), "mlp.c_fc": (h, 4 * h), "mlp.c_proj": (4 * h, h)}
    picked = [name for name in shapes if any(name == t or name.endswith("." + t) for t in targets)]
    return [(name, *shapes[name]) for name in picked]


def block_linear_shapes(n_embd: int) -> list:
    """(d_in, d_out) of the four linear layers of a block (QLoRA quantizes all of them)."""
    return [(d_in, d_out) for _, d_in, d_out in lora_matrices(n_embd, LORA_TARGETS)]


def lora_parameters(n_layer: int, n_embd: int, r: int, targets) -> int:
    return n_layer * sum(r * (d_in + d_out) for _, d_in, d_out in lora_matrices(n_embd, targets))


def adapter_parameters(n_layer: int, n_embd: int, m: int) -> int:
    return n_layer * 2 * (2 * n_embd * m + n_embd + m)


def prefix_parameters(n_layer: int, n_embd: int, p: int) -> int:
    return 2 * n_layer * p * n_embd


def prefix_encoder_parameters(n_layer: int, n_embd: int, p: int, k: int) -> int:
    out = 2 * n_layer * n_embd
    return p * k + (k * k + k) + (k * out + out)


def trainable_parameters(model: dict, peft: dict | None, training: bool = True) -> int:
    """Trainable parameters of the method ``peft`` (a checked ``peft`` section, or None: full
    fine-tuning) on a model of shape ``model`` (``n_layer``, ``n_embd``, ``vocab_size``,
    ``block_size``, ``bias``). ``training``: prefix-tuning's MLP counts (it is dropped after)."""
    L, h = model["n_layer"], model["n_embd"]
    if peft is None:
        V, T, b = model["vocab_size"], model["block_size"], model.get("bias", True)
        return 12 * L * h * h + (13 * L * h + 2 * h if b else 2 * L * h + h) + V * h + T * h
    kind = peft["peft_type"]
    if kind == LORA:
        return lora_parameters(L, h, peft["r"], peft["target_modules"])
    if kind == ADAPTER:
        return adapter_parameters(L, h, peft["bottleneck_size"])
    if kind == PREFIX_TUNING and peft["prefix_projection"] and training:
        return prefix_encoder_parameters(L, h, peft["num_virtual_tokens"], peft["encoder_hidden_size"])
    return prefix_parameters(L, h, peft["num_virtual_tokens"])


def trainable_matmul_parameters(model: dict, peft: dict | None) -> tuple[int, int]:
    """(weights multiplied by every token, weights multiplied once per micro-batch) among the
    trainable ones: what backward's weight-gradient FLOPs are made of."""
    L, h = model["n_layer"], model["n_embd"]
    if peft is None:
        return 12 * L * h * h + model["vocab_size"] * h, 0       # the blocks and the tied head
    kind = peft["peft_type"]
    if kind == LORA:
        return lora_parameters(L, h, peft["r"], peft["target_modules"]), 0
    if kind == ADAPTER:
        return L * 2 * 2 * h * peft["bottleneck_size"], 0
    if peft["prefix_projection"]:
        k = peft["encoder_hidden_size"]
        return 0, k * k + k * 2 * L * h                        # the MLP's two weights, on p rows
    return 0, 0


def forward_matmul_flops(model: dict, peft: dict | None, B: int, T: int) -> int:
    """Matmul FLOPs of one forward of B sequences of T tokens (module docstring)."""
    L, h, V = model["n_layer"], model["n_embd"], model["vocab_size"]
    p = peft["num_virtual_tokens"] if peft is not None and peft["peft_type"] == PREFIX_TUNING else 0
    per_token = L * (24 * h * h + 4 * (T + p) * h) + 2 * V * h
    once = 0
    if peft is not None and peft["peft_type"] == LORA:
        per_token += 2 * lora_parameters(L, h, peft["r"], peft["target_modules"])
    elif peft is not None and peft["peft_type"] == ADAPTER:
        per_token += 8 * L * h * peft["bottleneck_size"]
    elif p and peft["prefix_projection"]:
        k = peft["encoder_hidden_size"]
        once = 2 * p * (k * k + k * 2 * L * h)
    # the attention core over T queries: 2·2·T·(T + p)·h per layer and sequence, i.e. 4·(T + p)·h per token
    return B * T * per_token + once


def weight_gradient_flops(model: dict, peft: dict | None, B: int, T: int) -> int:
    """Backward's ``dW`` FLOPs of one micro-batch: 2 per trainable matmul weight and row."""
    per_token, once = trainable_matmul_parameters(model, peft)
    p = peft["num_virtual_tokens"] if peft is not None and peft["peft_type"] == PREFIX_TUNING else 0
    return 2 * B * T * per_token + 2 * p * once


def prefix_activation_bytes(n_layer: int, n_embd: int, n_head: int, B: int, T: int, p: int, w: int) -> int:
    """Extra bytes attention keeps for backward with p prefix positions: K and V rows and one
    more probability column per position, per layer (no attention dropout)."""
    return n_layer * w * B * p * (2 * n_embd + n_head * T)


def nf4_bytes(n: int, double_quant: bool = True) -> int:
    """Bytes of an n-element NF4 weight (Dettmers et al. 2023 §3): n/2 bytes of codes, and per
    64-weight block a float32 absmax — or, double-quantized, an FP8 code per block plus a
    float32 scale per 256 blocks and one float32 mean."""
    blocks = math.ceil(n / BLOCK_SIZE)
    codes = math.ceil(n / 2)
    if not double_quant:
        return codes + 4 * blocks
    return codes + blocks + 4 * math.ceil(blocks / DQ_BLOCK_SIZE) + 4


def bytes_per_step(strategy: str, p: int, trainable_units: list, frozen_units: list, w: int,
                   micro_batches: int = 1) -> int:
    """Bytes one rank sends per optimizer step (module docstring). ``trainable_units`` /
    ``frozen_units``: element counts per bucket (DDP, ZeRO-1/2: one bucket of all trainable
    elements) or per ZeRO-3 unit."""
    if p == 1:
        return 0
    S_t = sum(math.ceil(n / p) for n in trainable_units)
    S_f = sum(math.ceil(n / p) for n in frozen_units)
    if strategy in (DDP, ZERO1):
        return 2 * (p - 1) * S_t * w
    if strategy == ZERO2:
        return (micro_batches + 1) * (p - 1) * S_t * w
    if strategy == ZERO3:
        return micro_batches * (p - 1) * (3 * S_t + 2 * S_f) * w
    raise ValueError(f"no formula for strategy {strategy!r}")
