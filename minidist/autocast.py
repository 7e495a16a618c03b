"""``autocast``: run the engine's ops "in fp16 / bf16" while NumPy keeps computing in float32.

On a GPU, mixed precision (Micikevicius et al., "Mixed Precision Training", ICLR 2018)
keeps activations in a 16-bit format and feeds 16-bit operands to the tensor cores, which
multiply them exactly and *accumulate in fp32*. minidist emulates that bit for bit with
:func:`~minidist.numerics.quantize` while the arrays stay float32:

* **matmul inputs** (``linear``, ``matmul``, both products inside attention) are rounded to
  the format before the product; NumPy's float32 product of two rounded operands is the
  tensor core's "exact products, fp32 accumulation" (:func:`cast_input`);
* **op outputs** are rounded to the format, so every activation holds only values the
  format can represent — large ones overflow to inf, tiny ones flush to 0;
* **gradients flowing backward** into such an op are rounded too: the gradient of an fp16
  tensor is an fp16 tensor. This is where tiny activation gradients underflow to zero
  without loss scaling (the paper's Figure 3);
* **saved activations** are charged to the device at the format's size (2 bytes, 1 for fp8)
  instead of float32's 4.

As in ``torch.autocast``, some ops are numerically touchy and stay in fp32 — their outputs
are not rounded, their saved arrays are charged at 4 bytes (:data:`FP32_OPS`):
``cross_entropy``, ``softmax``, ``log_softmax`` (exponentials and sums over the vocabulary),
``layer_norm`` (mean/variance statistics), ``exp``, ``log``, ``pow``, ``sum``, ``mean``.
Pure view ops (``reshape``, ``transpose``, ``getitem``, ``split``, ``concat``) never change a
value, so they are left alone too (:data:`VIEW_OPS`). Scalar results (the loss, ``loss *
scale``) stay fp32, as PyTorch's type promotion keeps an fp32 scalar loss in fp32.

Like ``no_grad``, the active format lives in a :mod:`contextvars` variable: each thread rank
sees its own, nothing is process-global::

    with autocast("fp16"):
        logits, loss = model(x, y)
    (loss * scale).backward()      # the graph remembers which ops ran under autocast
"""
from __future__ import annotations

import contextvars

import numpy as np

from .numerics.formats import get_format
from .numerics.quantize import quantize

_autocast: contextvars.ContextVar[str | None] = contextvars.ContextVar("minidist_autocast", default=None)

# torch.autocast's "autocast to float32" list, restricted to the ops minidist has.
FP32_OPS = frozenset({"cross_entropy", "softmax", "log_softmax", "layer_norm",
                      "exp", "log", "pow", "sum", "mean"})
# Ops whose output is a view / rearrangement of the input: no value changes, nothing to round.
VIEW_OPS = frozenset({"reshape", "transpose", "getitem", "slice", "split", "concat"})


class autocast:
    """Context manager: ops run "in" ``dtype`` ("fp16", "bf16", "fp8_e4m3", "fp8_e5m2").

    ``dtype=None`` or ``"fp32"`` or ``enabled=False`` disables it (useful to suspend autocast
    for a region, e.g. the loss scaling). Nests like ``torch.autocast``.
    """

    def __init__(self, dtype: str | None = "fp16", enabled: bool = True):
        if dtype is not None and dtype != "fp32":
            get_format(dtype)                      # raise early on an unknown name
        self.dtype = dtype if enabled and dtype != "fp32" else None

    def __enter__(self):
        self._token = _autocast.set(self.dtype)
        return self

    def __exit__(self, *exc):
        _autocast.reset(self._token)

    def __call__(self, fn):
        def wrapper(*a, **k):
            with autocast(self.dtype):
                return fn(*a, **k)
        return wrapper


def autocast_dtype() -> str | None:
    """The format autocast is emulating in this thread, or None outside autocast."""
    return _autocast.get()


def cast_input(array: np.ndarray) -> np.ndarray:
    """A matmul operand as the tensor core sees it: rounded to the autocast format.

    Outside autocast (or for a non-float array) the array itself is returned. Inside, an
    operand that is already representable (the output of an autocast op, an fp16 weight) is
    also returned as is, so that the same buffer is not counted twice when saved.
    """
    dtype = _autocast.get()
    if dtype is None or array.dtype.kind != "f":
        return array
    rounded = quantize(array, dtype)
    return array if np.array_equal(rounded, array, equal_nan=True) else rounded


def output_dtype(name: str, data) -> str | None:
    """The format op ``name``'s output is rounded to under the current autocast, or None
    (outside autocast, fp32 ops, view ops, integer outputs, scalars)."""
    dtype = _autocast.get()
    if dtype is None or name in FP32_OPS or name in VIEW_OPS:
        return None
    if not isinstance(data, np.ndarray) or data.dtype.kind != "f" or data.size <= 1:
        return None
    return dtype


def round_output(data: np.ndarray, dtype: str) -> np.ndarray:
    """Round an op's freshly computed output, in place when the op owns the buffer (so
    anything the op saved that *is* its output — exp, tanh, div save ``out`` — sees the
    rounded values too)."""
    rounded = quantize(data, dtype)
    if data.flags.owndata and data.flags.writeable:
        np.copyto(data, rounded)
        return data
    return rounded


def rounding_backward(backward, dtype: str):
    """Wrap an op's backward so the incoming gradient is rounded to ``dtype`` first:
    the gradient with respect to an fp16 activation is itself an fp16 tensor."""
    def backward_lowp(g, needs):
        return backward(quantize(g, dtype), needs)
    return backward_lowp
