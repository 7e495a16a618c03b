"""Quantization-aware training: fake-quant in the forward, the straight-through estimator in the backward.

QAT (the source notes' 量化感知训练; Jacob et al. 2018, §3) trains the model *through* the
rounding it will meet at inference: every linear layer computes with ``ŵ =
dequantize(quantize(w))`` (and, optionally, quantized inputs), so the float weights move to
where their *quantized* values give a low loss. Rounding has zero derivative almost
everywhere, so the backward pretends it is the identity — the **straight-through
estimator** (Bengio et al. 2013):

* activations, with a fixed range (scale, zero point) calibrated before QAT:
  ``∂L/∂x = ∂L/∂x̂ · 1[qmin ≤ round(x / s) + z ≤ qmax]`` — the gradient passes where the
  value was representable and is 0 where it was clamped (Jacob et al. §3; torch's
  ``FakeQuantize``);
* weights, whose scale follows ``max|w|`` (or min/max) of the current weights at every
  step, so that no weight is ever clamped: ``∂L/∂w = ∂L/∂ŵ``. The scale itself gets no
  gradient (LSQ, Esser et al. 2020, would learn it).

:func:`prepare_qat` swaps each linear layer for a :class:`QATLinear` that shares its weight
and bias parameters — the optimizer built on the model keeps training them, so QAT runs in
the ordinary :class:`~minidist.training.trainer.Trainer` — and :func:`convert_qat` swaps in the
deployed :class:`~.ptq.QuantizedLinear`, whose outputs equal the fake-quant forward's.
"""
from __future__ import annotations

import numpy as np

from .. import functional as F
from ..nn import Linear, Module
from ..tensor import Tensor, as_tensor, make_result
from .ptq import ObservedLinear, QuantizedLinear, calibrate, prepare
from .quantize import int_range, quantize, range_params
from .targets import linear_layers, swap


def fake_quant(x, scale: float, zero_point, bits: int = 8, scheme: str = "asymmetric") -> Tensor:
    """``s·(clamp(round(x/s) + z) − z)`` with the clipped straight-through gradient."""
    x = as_tensor(x)
    qmin, qmax = int_range(bits, scheme)
    z = 0.0 if zero_point is None else float(zero_point)
    codes = np.rint(x.data.astype(np.float64) / scale) + z                   # before the clamp
    inside = (codes >= qmin) & (codes <= qmax)
    out = (scale * (np.clip(codes, qmin, qmax) - z)).astype(x.dtype)

    def backward(g, needs):
        return (g * inside,)                                                  # STE: 1 inside, 0 where clamped
    return make_result(out, (x,), backward, "fake_quant", saved=[inside], flops=4 * x.size)


def fake_quant_weight(w, bits: int, scheme: str = "symmetric", granularity: str = "channel",
                      group_size: int | None = None) -> Tensor:
    """``ŵ = dequantize(quantize(w))`` with :func:`~.quantize.quantize`'s conventions (exactly
    the values a deployed model holds); backward: the identity (nothing is clamped)."""
    w = as_tensor(w)
    w_hat = quantize(w.data, bits, scheme, granularity, group_size).dequantize(w.dtype)

    def backward(g, needs):
        return (g,)                                                           # straight through
    return make_result(w_hat, (w,), backward, "fake_quant", flops=4 * w.size)


class QATLinear(Module):
    """``F.linear(fq(x), fq(W), b)``: the same weight and bias parameters as the layer it
    replaced. ``activations``: None, or the fixed ``(scale, zero_point)`` of 8-bit inputs."""

    def __init__(self, linear, bits: int, scheme: str = "symmetric", granularity: str = "channel",
                 group_size: int | None = None, activations=None):
        super().__init__()
        self.weight, self.bias = linear.weight, linear.bias
        self.spec = {"bits": bits, "scheme": scheme, "granularity": granularity, "group_size": group_size}
        self.activations = activations

    def forward(self, x):
        if self.activations is not None:
            x = fake_quant(x, *self.activations, bits=8, scheme="asymmetric")
        return F.linear(x, fake_quant_weight(self.weight, **self.spec), self.bias)


def prepare_qat(model: Module, bits: int, scheme: str = "symmetric", granularity: str = "channel",
                group_size: int | None = None, calibration=None) -> Module:
    """Swap every linear layer for a :class:`QATLinear` (in place). With ``calibration``
    batches (W8A8 only), the inputs are fake-quantized to 8 bits too, their range calibrated
    min-max on those batches and then fixed."""
    ranges = {}
    if calibration is not None:
        if (bits, scheme, granularity) != (8, "symmetric", "channel"):
            raise ValueError("quantized inputs (calibration=…) deploy as W8A8: use bits=8, scheme='symmetric', "
                             "granularity='channel'")
        prepare(model, "minmax")
        calibrate(model, calibration)
        for name, _, _, obs in linear_layers(model, ObservedLinear):
            lo, hi = obs.observer.range()
            scale, zp = range_params(lo, hi, 8, "asymmetric")
            ranges[name] = (float(scale), int(zp))
    kinds = (Linear, ObservedLinear)
    for name, parent, attr, lin in linear_layers(model, kinds):
        swap(parent, attr, QATLinear(lin, bits, scheme, granularity, group_size, ranges.get(name)))
    return model


def convert_qat(model: Module) -> Module:
    """QAT layers → deployed quantized layers with the same quantizer (in place)."""
    for _, parent, attr, q in linear_layers(model, QATLinear):
        w = quantize(q.weight.data, **q.spec)
        bias = None if q.bias is None else q.bias.data
        swap(parent, attr, QuantizedLinear(w, bias, q.activations))
    return model
