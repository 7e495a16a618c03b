"""What each compression saves in bytes and FLOPs: measured by minidist's accounting, beside the formula.

:func:`compression_costs` measures (:func:`~.targets.measure`: the simulated device's
"parameters" bytes and one forward's FLOPs and compute time) the dense model and its
compressed copies; the ``*_formula`` functions say what to expect, for a GPT with ``L``
layers of width ``C``, on a batch of ``B`` sequences of ``T`` tokens:

* **weights quantized to b bits** (scales float32): each linear weight ``(in, out)`` holds
  ``ceil(in·out·b/8)`` bytes of codes plus 4 bytes per scale (``out`` of them per channel,
  ``in/g · out`` per group); NF4: ``in·out/2`` + one FP8 byte per 64 weights + 4 bytes per
  256 of those + a 4-byte mean. Everything else stays 4 bytes a parameter. FLOPs do not fall
  (the weight is dequantized, then a float matmul); W8A8 runs the same matmul FLOPs on the
  int8 units at twice the rate (:data:`~.int_matmul.INT8_SPEEDUP`), plus quantize/dequantize.
* **structured pruning** of a fraction ``f`` of heads and channels in every layer saves
  ``f·L·(12C² + 7C)`` parameters (weights of the four linears, biases of ``c_attn`` and
  ``c_fc``) and ``f·L·(24·B·T·C² + 4·B·T²·C)`` matmul FLOPs (the four linears and the
  per-head attention products, as minidist counts them), when ``f·n_head`` and ``f·4C``
  are whole numbers.
* **unstructured pruning** saves nothing: the zeros are still stored and multiplied. A
  sparse format (CSR: a 4-byte value and a 4-byte column index per kept weight, plus row
  pointers) only holds fewer bytes past 50 % sparsity (:func:`~.prune.csr_bytes`); fewer
  FLOPs need sparse kernels (or 2:4 sparse tensor cores), which minidist does not emulate.
"""
from __future__ import annotations

import numpy as np

from .accuracy import SCHEMES
from .nf4 import BLOCK_SIZE, DQ_BLOCK_SIZE, quantize_nf4
from .prune import csr_bytes, prunable, prune_weights
from .ptq import quantize_dynamic, quantize_weights
from .quantize import quantize
from .structured import compact, structured_masks, unit_pairs, zero_units
from .targets import copy_model, linear_layers, measure

ERROR_BITS = 4


def quantized_bytes_formula(model, bits: int, granularity: str = "channel", group_size: int | None = None) -> int:
    """Parameter bytes of ``model`` with every linear weight quantized (float32 elsewhere)."""
    total = 4 * model.num_parameters()
    for _, _, _, lin in linear_layers(model):
        n_in, n_out = lin.weight.shape
        scales = {"tensor": 1, "channel": n_out, "group": n_in // (group_size or 1) * n_out}[granularity]
        total += -(-n_in * n_out * bits // 8) + 4 * scales - 4 * n_in * n_out
    return total


def nf4_bytes_formula(model) -> int:
    total = 4 * model.num_parameters()
    for _, _, _, lin in linear_layers(model):
        n = lin.weight.size
        blocks = -(-n // BLOCK_SIZE)
        total += -(-n // 2) + blocks + 4 * -(-blocks // DQ_BLOCK_SIZE) + 4 - 4 * n
    return total


def structured_savings_formula(config, batch: int, seq: int, fraction: float) -> dict:
    """Parameter bytes and matmul FLOPs removed by pruning ``fraction`` of every layer's
    heads and MLP channels (module docstring)."""
    L, C = config.n_layer, config.n_embd
    return {"bytes": round(4 * fraction * L * (12 * C * C + 7 * C)),
            "matmul_flops": round(fraction * L * (24 * batch * seq * C * C + 4 * batch * seq * seq * C))}


def compression_costs(model, idx, fractions=(0.25, 0.5, 0.75), sparsity: float = 0.5) -> dict:
    """label → :class:`~.targets.Cost` of one forward of ``idx`` (B, T), measured."""
    out = {"dense fp32": measure(copy_model(model), idx)}
    m = copy_model(model)
    prune_weights(m, sparsity, "magnitude", "global")
    out[f"unstructured {sparsity:.0%}"] = measure(m, idx)
    for f in fractions:
        m = copy_model(model)
        pairs = unit_pairs(m)
        masks = structured_masks(pairs, f)
        zero_units(pairs, masks)
        compact(pairs, masks)
        out[f"structured {f:.0%}"] = measure(m, idx)
    for bits in (8, 4):
        q = quantize_weights(copy_model(model), lambda w, b=bits: quantize(w, b, "symmetric", "channel"))
        out[f"int{bits} weights"] = measure(q, idx)
    out["NF4 weights"] = measure(quantize_weights(copy_model(model), quantize_nf4), idx)
    out["W8A8 dynamic"] = measure(quantize_dynamic(copy_model(model)), idx)
    return out


def csr_table(model, sparsities=(0.0, 0.5, 0.75, 0.9)) -> dict:
    """sparsity → (dense bytes, CSR bytes) of the linear weights after global magnitude pruning."""
    out = {}
    for s in sparsities:
        m = copy_model(model)
        prune_weights(m, s, "magnitude", "global")
        ws = [p.data for p in prunable(m).values()]
        out[s] = (sum(w.nbytes for w in ws), sum(csr_bytes(w) for w in ws))
    return out


def error_samples(model, bits: int = ERROR_BITS, schemes=None) -> dict:
    """label → quantization errors ``ŵ − w`` of every linear weight, flattened (for histograms)."""
    schemes = schemes or SCHEMES
    ws = [lin.weight.data for _, _, _, lin in linear_layers(model)]
    out = {label: np.concatenate([(quantize(w, bits, **kw).dequantize() - w).ravel() for w in ws])
           for label, kw in schemes.items()}
    out["NF4 (double quant)"] = np.concatenate([(quantize_nf4(w).dequantize() - w).ravel() for w in ws])
    return out
