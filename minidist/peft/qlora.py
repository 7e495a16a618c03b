"""QLoRA: LoRA on a frozen 4-bit base, with paged optimizer states (Dettmers et al. 2023).

QLoRA's three pieces (§3), and what minidist does for each:

1. **4-bit NormalFloat base.** Every linear layer of the blocks stores W as NF4 codes with
   double-quantized block constants (:mod:`minidist.compression.nf4`, about 4.127 bits per
   weight) — bitsandbytes' ``Linear4bit``, :class:`Linear4bit` here. The codes never train;
   each matmul dequantizes W to the compute dtype (QLoRA's bf16; here the run's dtype, and
   bf16 when ``bf16.enabled``) and multiplies. The device is charged the NF4 bytes, not
   the dense W: like bitsandbytes, which dequantizes again in backward instead of keeping
   the dense copy, nothing else is held (the dequantization's own work is not counted).
2. **16-bit adapters**: :class:`~minidist.peft.lora.LoRALinear` over the 4-bit base — the
   only trainable parameters, in the run's precision (fp32 masters under ``bf16.enabled``).
3. **Paged optimizers** (NVIDIA unified memory: states evicted to CPU RAM when the GPU runs
   short, paged back for the update). :func:`paged` keeps every optimizer state in the host
   pool (``device.host``) and charges, at each update, the copy of that parameter's states
   onto the device and back on the ``h2d``/``d2h`` streams — the worst case of paging, each
   step, which the timeline shows; the device holds no optimizer state.
"""
from __future__ import annotations

import numpy as np

from .. import functional as F
from ..compression.nf4 import quantize_nf4
from ..device import current_device
from ..nn import Linear, Module
from ..tensor import Tensor


class Linear4bit(Module):
    """``y = x·dequant(W_nf4) + b``: a pretrained ``Linear`` with W quantized to NF4 (frozen).
    ``shape`` is W's (d_in, d_out); the bias stays a frozen Parameter of the run's dtype."""

    def __init__(self, linear: Linear, double_quant: bool = True):
        super().__init__()
        w = linear.weight
        self.shape, self.compute_dtype = tuple(w.shape), w.dtype
        self.weight_nf4 = quantize_nf4(w.data, double_quant=double_quant)     # codes: not a Parameter
        w.unplace()                                                           # the dense W leaves the device
        self.bias = linear.bias
        if self.bias is not None:
            self.bias.requires_grad = False
        self.device = current_device()
        self._handle = self.device.memory.alloc(self.weight_nf4.nbytes(), "parameters", "nf4 weight") \
            if self.device is not None else None

    def nbytes(self) -> int:
        """Bytes of the 4-bit weight: packed codes plus the (double-quantized) constants."""
        return self.weight_nf4.nbytes()

    def dequantize(self) -> np.ndarray:
        return self.weight_nf4.dequantize(self.compute_dtype)                # (d_in, d_out)

    def forward(self, x):
        return F.linear(x, Tensor(self.dequantize()), self.bias)              # (B, T, d_out)


class PagedStates:
    """Mixed into an optimizer class by :func:`paged`: states in the host pool, paged in and
    out around each parameter's update (module docstring, point 3)."""

    paged = True

    def state_pool(self, device) -> tuple:
        return device.host, " (paged)"

    def update_for(self, p, param, grad, state, group) -> None:
        dev = getattr(p, "device", None)
        size = sum(a.nbytes for a in state.values() if isinstance(a, np.ndarray))
        if dev is None or not size:
            return super().update_for(p, param, grad, state, group)
        clock, bw = dev.clock, dev.spec.host_bandwidth
        # why (h2d): the update reads and writes the states, which wait in host memory
        _, t_in = clock.run("h2d", size / bw, f"page in {p.name} states", "memcpy",
                            start_after=clock.now("compute"), args={"bytes": size})
        clock.wait("compute", t_in)
        super().update_for(p, param, grad, state, group)
        # why (d2h): evicted again, so that the device holds no optimizer state between steps
        clock.run("d2h", size / bw, f"page out {p.name} states", "memcpy", start_after=clock.now("compute"),
                  args={"bytes": size})


def paged(optimizer_class: type) -> type:
    """The paged variant of an optimizer class (bitsandbytes' ``PagedAdamW`` …)."""
    return type(f"Paged{optimizer_class.__name__}", (PagedStates, optimizer_class), {})
