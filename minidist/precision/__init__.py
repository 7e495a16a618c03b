"""Number formats and mixed-precision helpers (SPEC §7).

* :mod:`.formats` — fp32 / fp16 / bf16 / fp8_e4m3 / fp8_e5m2 described by their bit fields;
* :mod:`.quantize` — round-to-nearest-even casts written with integer bit manipulation;
* :mod:`.bits` — teaching views: a value's fields, a table of ranges, lost precision;
* :mod:`.loss_scaler` — static and dynamic loss scaling with DeepSpeed's semantics;
* :mod:`.autocast` — ops "in fp16/bf16": rounded outputs, matmul inputs, gradients;
* :mod:`.mixed` — mixed-precision training: fp32 masters, low-precision params and grads;
* :mod:`.underflow` — how much gradient a format flushes to zero, with and without scaling.
"""
from ..autocast import FP32_OPS, autocast, autocast_dtype, cast_input
from ..numerics.bits import (
    BitView,
    PrecisionLoss,
    decompose,
    format_table,
    format_table_text,
    precision_loss_example,
)
from ..numerics.formats import FORMATS, Format, get_format
from .loss_scaler import (
    FP16_DEFAULTS,
    DynamicLossScaler,
    LossScaleAtMinimumError,
    LossScaleEvent,
    StaticLossScaler,
    from_config,
    has_overflow,
)
from .mixed import (
    FP32Master,
    MixedPrecision,
    MixedPrecisionStep,
    Precision,
    from_training_config,
    global_norm_clip_,
    precision_from_config,
)
from ..numerics.quantize import from_bits, quantize, to_bits
from .underflow import GradientUnderflow, gradient_underflow, lost_gradient_mass

__all__ = [
    "FORMATS",
    "FP16_DEFAULTS",
    "FP32_OPS",
    "FP32Master",
    "GradientUnderflow",
    "MixedPrecision",
    "MixedPrecisionStep",
    "Precision",
    "autocast",
    "autocast_dtype",
    "cast_input",
    "from_training_config",
    "global_norm_clip_",
    "precision_from_config",
    "gradient_underflow",
    "lost_gradient_mass",
    "BitView",
    "DynamicLossScaler",
    "Format",
    "LossScaleAtMinimumError",
    "LossScaleEvent",
    "PrecisionLoss",
    "StaticLossScaler",
    "decompose",
    "format_table",
    "format_table_text",
    "from_bits",
    "from_config",
    "get_format",
    "has_overflow",
    "precision_loss_example",
    "quantize",
    "to_bits",
]
