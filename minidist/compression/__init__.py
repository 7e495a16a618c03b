"""minidist.compression: quantization and pruning, with their bytes, FLOPs and accuracy cost.

==================  =========================================================================
module              what a student finds there
==================  =========================================================================
:mod:`.quantize`    linear (symmetric/asymmetric) and log₂ quantization, per tensor / channel /
                    group, 2–8 bits, the exact conventions; bit packing
:mod:`.nf4`         QLoRA's NormalFloat-4 code book, blockwise NF4, double quantization
:mod:`.int_matmul`  ``int8 × int8 → int32`` accumulated exactly, zero-point correction, the
                    explicit dequantize
:mod:`.ptq`         post-training quantization of the GPT: weight-only, static (min-max or
                    percentile calibration) and dynamic W8A8
:mod:`.qat`         quantization-aware training: fake-quant, the straight-through estimator
:mod:`.prune`       magnitude, first-order Taylor, L1-regularised and iterative unstructured
                    pruning; masks kept through fine-tuning
:mod:`.structured`  removing attention heads and MLP channels (the units TP splits) for real
:mod:`.targets`     which layers are compressed; measuring bytes and FLOPs on a device
:mod:`.costs`       bytes and FLOPs saved, measured beside their formulas
:mod:`.accuracy`    held-out loss of every variant on a GPT trained by the Trainer, per seed
==================  =========================================================================

``python -m minidist.demo --chapters compression`` runs the experiments and draws the
figures; ``notebooks/11_inference_and_compression.ipynb`` walks through them.
"""
from .int_matmul import int8_matmul, w8a8_linear
from .nf4 import NF4, nf4_table, quantize_nf4
from .prune import L1Trainer, Pruning, iterative_prune, magnitude_scores, masks_from_scores, prune_weights, taylor_scores
from .ptq import QuantizedLinear, calibrate, convert, prepare, quantize_dynamic, quantize_weights
from .qat import QATLinear, convert_qat, fake_quant, prepare_qat
from .quantize import QuantizedTensor, fake_quantize, pack_codes, range_params
from .structured import compact, structured_masks, unit_pairs, zero_units
from .targets import copy_model, linear_layers, measure

__all__ = ["NF4", "L1Trainer", "Pruning", "QATLinear", "QuantizedLinear", "QuantizedTensor", "calibrate", "compact",
           "convert", "convert_qat", "copy_model", "fake_quant", "fake_quantize", "int8_matmul", "iterative_prune",
           "linear_layers", "magnitude_scores", "masks_from_scores", "measure", "nf4_table", "pack_codes",
           "prepare", "prepare_qat", "prune_weights", "quantize_dynamic", "quantize_nf4", "quantize_weights",
           "range_params", "structured_masks", "taylor_scores", "unit_pairs", "w8a8_linear", "zero_units"]
