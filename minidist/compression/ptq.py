"""Post-training quantization of the GPT: weight-only, static W8A8, dynamic W8A8.

The source notes' three kinds (静态量化 / 动态量化 / 量化感知训练; QAT is :mod:`.qat`):

* **weight-only** (:func:`quantize_weights`): every linear layer keeps its weight as codes +
  scales (any scheme of :mod:`.quantize`, or NF4 of :mod:`.nf4`) and dequantizes it before a
  float matmul (what bitsandbytes' 4-bit layers and GPTQ kernels do, fused);
* **static** (:func:`prepare` → run calibration batches → :func:`convert`): observers record
  each layer's input range on calibration data once; the activation scale and zero point
  are then fixed, and inference runs ``int8 × int8 → int32`` (:mod:`.int_matmul`).
  Calibration: **min-max** (the whole observed range) or **percentile** (the range between
  the ``100 − p``-th and ``p``-th percentiles of all observed values: a few outliers no
  longer stretch the grid; values beyond it clamp);
* **dynamic** (:func:`quantize_dynamic`): weights quantized ahead of time; the activation
  range is measured on each batch at inference (``torch.ao.quantization.quantize_dynamic``):
  no calibration, always the batch's own min-max, at the cost of a pass over the
  activations per layer.

In W8A8 the weights are int8 symmetric per output channel and the activations int8
asymmetric per tensor (Jacob et al. 2018's choices: zero is exact, GELU's outputs use the
whole range). Biases, LayerNorms and embeddings stay float32. The names follow
``torch.ao.quantization`` (``prepare``, ``convert``, ``quantize_dynamic``, observers).
"""
from __future__ import annotations

import numpy as np

from .. import functional as F
from ..device import current_device
from ..nn import Linear, Module
from ..tensor import Parameter, Tensor, as_tensor, no_grad
from .int_matmul import w8a8_linear
from .quantize import QuantizedTensor, quantize, range_params
from .targets import linear_layers, swap


class MinMaxObserver:
    """The smallest and largest input value seen over the calibration batches."""

    def __init__(self):
        self.lo, self.hi = np.inf, -np.inf

    def observe(self, x: np.ndarray) -> None:
        self.lo, self.hi = min(self.lo, float(x.min())), max(self.hi, float(x.max()))

    def range(self) -> tuple[float, float]:
        return self.lo, self.hi


class PercentileObserver:
    """The ``100 − p``-th and ``p``-th percentiles (linear interpolation, NumPy's default) of
    every input value seen (kept: fine at this size; TensorRT keeps a histogram instead)."""

    def __init__(self, percentile: float = 99.9):
        self.p = percentile
        self.values: list[np.ndarray] = []

    def observe(self, x: np.ndarray) -> None:
        self.values.append(np.asarray(x, np.float64).reshape(-1))

    def range(self) -> tuple[float, float]:
        lo, hi = np.percentile(np.concatenate(self.values), [100 - self.p, self.p])
        return float(lo), float(hi)


OBSERVERS = {"minmax": MinMaxObserver, "percentile": PercentileObserver}


class ObservedLinear(Module):
    """A float linear that records its inputs' range (calibration); shares the weights."""

    def __init__(self, linear: Linear, observer):
        super().__init__()
        self.weight, self.bias, self.observer = linear.weight, linear.bias, observer

    def forward(self, x):
        self.observer.observe(as_tensor(x).data)
        return F.linear(x, self.weight, self.bias)


class QuantizedLinear(Module):
    """Inference-only linear with a quantized weight.

    ``weight_q``: a :class:`~.quantize.QuantizedTensor` or :class:`~.nf4.NF4Tensor` of the
    ``(in, out)`` weight. ``activations``: None (weight-only: dequantize, float matmul),
    ``"dynamic"`` (W8A8, range of each batch), or ``(scale, zero_point)`` (W8A8, static)."""

    def __init__(self, weight_q, bias=None, activations=None):
        super().__init__()
        if activations is not None and not (isinstance(weight_q, QuantizedTensor) and weight_q.bits == 8 and
                                            weight_q.scheme == "symmetric" and weight_q.granularity == "channel"):
            raise ValueError("W8A8 needs int8 weights, symmetric, one scale per output channel")
        self.weight_q = weight_q
        self.bias = None if bias is None else Parameter(np.array(bias, np.float32), requires_grad=False)
        self.activations = activations
        self.in_features, self.out_features = weight_q.shape

    def storage(self) -> dict:
        """What this layer holds for its weight (the bias is a float32 parameter)."""
        return self.weight_q.storage()

    def dequantized_weight(self) -> np.ndarray:
        dev = current_device()
        if dev is not None:
            dev.compute("dequantize", self.in_features * self.out_features)
        return self.weight_q.dequantize(np.float32)

    def forward(self, x):
        x = as_tensor(x)
        if self.activations is None:                          # weight-only: W4A16-style
            return F.linear(x, Tensor(self.dequantized_weight()), self.bias)
        x2 = x.data.reshape(-1, self.in_features)             # (B·T, in)
        if self.activations == "dynamic":                     # this batch's own min-max
            dev = current_device()
            if dev is not None:
                dev.compute("dynamic range", 2 * x2.size)
            scale, zp = range_params(x2.min(), x2.max(), 8, "asymmetric")
        else:
            scale, zp = self.activations
        y = w8a8_linear(x2, self.weight_q.q, self.weight_q.scale, float(scale), int(zp),
                        None if self.bias is None else self.bias.data)
        return Tensor(y.reshape(*x.shape[:-1], self.out_features))   # (B, T, out)


def _bias(linear) -> np.ndarray | None:
    return None if linear.bias is None else linear.bias.data


def quantize_weights(model: Module, quantizer) -> Module:
    """Weight-only: each linear layer's weight becomes ``quantizer(weight array)`` (in place)."""
    for _, parent, attr, lin in linear_layers(model):
        swap(parent, attr, QuantizedLinear(quantizer(lin.weight.data), _bias(lin)))
    return model


def prepare(model: Module, observer: str = "minmax", **observer_kw) -> Module:
    """Static PTQ, step 1: put an observer on every linear layer's input (in place)."""
    for _, parent, attr, lin in linear_layers(model):
        swap(parent, attr, ObservedLinear(lin, OBSERVERS[observer](**observer_kw)))
    return model


def calibrate(model: Module, batches) -> Module:
    """Step 2: run the calibration batches ``[(x, y), …]`` forward; the observers record."""
    with no_grad():
        for x, _ in batches:
            model(x)
    return model


def _w8(w: np.ndarray) -> QuantizedTensor:
    return quantize(w, 8, "symmetric", "channel")


def convert(model: Module) -> Module:
    """Step 3: observed layers → W8A8 layers with the calibrated activation scale and zero point."""
    for _, parent, attr, obs in linear_layers(model, ObservedLinear):
        lo, hi = obs.observer.range()
        scale, zp = range_params(lo, hi, 8, "asymmetric")
        swap(parent, attr, QuantizedLinear(_w8(obs.weight.data), _bias(obs), (float(scale), int(zp))))
    return model


def quantize_dynamic(model: Module) -> Module:
    """W8A8 with each batch's activation range measured at inference (in place)."""
    for _, parent, attr, lin in linear_layers(model):
        swap(parent, attr, QuantizedLinear(_w8(lin.weight.data), _bias(lin), "dynamic"))
    return model
