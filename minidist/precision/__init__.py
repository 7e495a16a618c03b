"""minidist.precision: mixed-precision training.

==================  ==================================================================
module              what a student finds there
==================  ==================================================================
:mod:`.loss_scaler` static and dynamic loss scaling with DeepSpeed's semantics
:mod:`.mixed`       mixed-precision training: fp32 masters, low-precision params and grads
:mod:`.underflow`   how much gradient a format flushes to zero, with and without scaling
==================  ==================================================================

The number formats themselves (bit fields, round-to-nearest-even ``quantize``, bit views) are
a leaf below the engine, :mod:`minidist.numerics`, and ``autocast`` belongs to the engine
(:mod:`minidist.autocast`); both are re-exported here so that ``from minidist.precision import
quantize, autocast`` keeps working.
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
