"""LoRA: a trainable low-rank update beside a frozen weight (Hu et al. 2021).

A pretrained linear layer ``y = x·W + b`` (W stored (d_in, d_out), as every minidist
linear) is frozen and a rank-r path is added beside it (Hu et al. 2021, eq. 3, in this
layout)::

    y = x·W + b + (α/r) · dropout(x)·A·B          A: (d_in, r), B: (r, d_out)

A starts random (PEFT's Kaiming-uniform: U(−1/√d_in, 1/√d_in)) and B at zero, so the
adapted model starts as the pretrained one and the first step moves only B. α/r (PEFT's
``lora_alpha`` / ``r``) keeps the update's scale fixed when r changes (Hu et al. §4.1).
Trainable parameters per adapted matrix: ``r·(d_in + d_out)`` — against ``d_in·d_out`` for
the matrix itself.

**Forward beside backward.** The frozen W gets no gradient: backward computes only
``dx = dy·Wᵀ`` through it (the linear op skips ``dW`` for a weight that does not require
grad). Through the low-rank path, with ``h = dropout(x)·A`` (B, T, r) and ``s = α/r``::

    dB = s · hᵀ·dy          (r, d_out)
    dA = s · dropout(x)ᵀ·(dy·Bᵀ)      (d_in, r)
    dx += dropout'(s · dy·Bᵀ·Aᵀ)

— autograd does exactly this through the two ``linear`` ops below.

**Merge for inference** (Hu et al. §4.1, "no additional inference latency"): ``W ← W + s·A·B``
and the low-rank path is skipped; :meth:`LoRALinear.merge` / :meth:`unmerge` do it in place,
:func:`merge_and_unload` turns every LoRA layer back into a plain ``Linear``.

The base layer is any module computing ``x·W + b``: a ``Linear``, or QLoRA's 4-bit
:class:`~minidist.peft.qlora.Linear4bit`; it keeps its parameters under ``base_layer``
(PEFT's name).
"""
from __future__ import annotations

import math

import numpy as np

from .. import functional as F
from ..layers import mark
from ..nn import Linear, Module
from ..tensor import Parameter, no_grad
from .qlora import Linear4bit


class LoRALinear(Module):
    """``base_layer(x) + (lora_alpha / r) · dropout(x)·A·B`` (module docstring)."""

    def __init__(self, base_layer: Module, r: int, lora_alpha: float, lora_dropout: Module, rng):
        super().__init__()
        self.base_layer = base_layer
        d_in, d_out = base_shape(base_layer)
        dtype = base_weight(base_layer).dtype
        self.r, self.lora_alpha = int(r), float(lora_alpha)
        self.scaling = self.lora_alpha / self.r
        bound = 1.0 / math.sqrt(d_in)
        self.lora_A = Parameter(rng.uniform(-bound, bound, (d_in, self.r)).astype(dtype))
        self.lora_B = Parameter(np.zeros((self.r, d_out), dtype))
        mark(self.lora_A, adapter=True)
        mark(self.lora_B, adapter=True)
        self.lora_dropout = lora_dropout                            # a Dropout (the model's layer factory's)
        self.merged = False

    def forward(self, x):
        y = self.base_layer(x)                                      # (B, T, d_out) through the frozen W
        if self.merged:
            return y
        h = F.linear(self.lora_dropout(x), self.lora_A)             # (B, T, r)
        h = h * np.asarray(self.scaling, h.dtype)                   # s·h: the scale on the narrow side
        return y + F.linear(h, self.lora_B)                         # (B, T, d_out)

    def delta_weight(self) -> np.ndarray:
        """``s·A·B`` (d_in, d_out): what the low-rank path adds to W."""
        return (self.scaling * (self.lora_A.data @ self.lora_B.data)).astype(self.lora_A.dtype)

    def merge(self) -> None:
        """``W ← W + s·A·B``; the forward then skips the low-rank path (a plain linear's cost)."""
        if isinstance(self.base_layer, Linear4bit):
            raise ValueError("a 4-bit base cannot hold W + s·A·B exactly; merge_and_unload dequantizes it first")
        if not self.merged:
            self.base_layer.weight.data += self.delta_weight()
            self.merged = True

    def unmerge(self) -> None:
        """Undo :meth:`merge` (``W ← W − s·A·B``), to train on."""
        if self.merged:
            self.base_layer.weight.data -= self.delta_weight()
            self.merged = False


def base_shape(base: Module) -> tuple:
    """(d_in, d_out) of a base layer: a ``Linear`` or a :class:`~.qlora.Linear4bit`."""
    return tuple(base.shape) if isinstance(base, Linear4bit) else tuple(base.weight.shape)


def base_weight(base: Module) -> np.ndarray:
    """The base layer's W as a dense array (a 4-bit base dequantized)."""
    return base.dequantize() if isinstance(base, Linear4bit) else base.weight.data


def lora_layers(model: Module) -> list:
    """Every :class:`LoRALinear` of ``model``."""
    return [m for m in model.modules() if isinstance(m, LoRALinear)]


def merge_and_unload(model: Module) -> Module:
    """PEFT's ``merge_and_unload``: every LoRA layer becomes one plain ``Linear`` holding
    ``W + s·A·B`` (a 4-bit base is dequantized first), in place; returns ``model``."""
    for parent in list(model.modules()):
        for name, child in list(parent._modules.items()):
            if isinstance(child, LoRALinear):
                with no_grad():
                    w = base_weight(child.base_layer) + (0 if child.merged else child.delta_weight())
                    b = child.base_layer.bias
                    setattr(parent, name, Linear.from_arrays(w, None if b is None else b.data.copy()))
    return model

