"""minidist.numerics: what the bits of a number format mean, and rounding into it.

A leaf: it imports nothing of minidist, so the engine's autocast can use it without
loading any training machinery.

==================  ==================================================================
module              what a student finds there
==================  ==================================================================
:mod:`.formats`     fp32 / fp16 / bf16 / fp8_e4m3 / fp8_e5m2 described by their bit fields
:mod:`.quantize`    round-to-nearest-even casts written with integer bit manipulation
:mod:`.bits`        teaching views: a value's fields, a table of ranges, lost precision
==================  ==================================================================
"""
from .bits import BitView, PrecisionLoss, decompose, format_table, format_table_text, precision_loss_example
from .formats import FORMATS, Format, get_format
from .quantize import from_bits, quantize, to_bits

__all__ = ["FORMATS", "BitView", "Format", "PrecisionLoss", "decompose", "format_table", "format_table_text",
           "from_bits", "get_format", "precision_loss_example", "quantize", "to_bits"]
