"""What compression touches, found by the model's structure, and how its cost is measured.

* :func:`linear_layers` — the blocks' linear layers (``c_attn``, ``attn.c_proj``, ``c_fc``,
  ``mlp.c_proj``): every :class:`~minidist.nn.Linear` of the GPT. The embeddings (and the LM
  head tied to ``wte``), the LayerNorms and the biases stay in float32, as in weight-only
  LLM quantization (bitsandbytes, GPTQ) and in Han et al. (2015)'s pruning of the layers'
  weights. Found by module type, never by a parameter's name.
* :func:`swap` — replace a layer by another in its parent (what ``torch.ao.quantization``'s
  ``prepare``/``convert`` do): the model's forward is unchanged, only the layer's is.
* :func:`copy_model` — a fresh GPT with the same weights (off every device).
* :func:`measure` — bytes of the weights (the simulated device's "parameters") and FLOPs of
  one forward, counted by minidist's own accounting (:mod:`minidist.memory`,
  :meth:`minidist.device.Device.compute`). A compressed layer declares what it stores with
  ``storage()`` (packed codes, scales); a plain parameter is charged at its dtype's size.

Compression here works on one rank's whole model (the one GPT of :mod:`minidist.model`).
"""
from __future__ import annotations

import contextvars
import dataclasses

import numpy as np

from ..device import Device
from ..memory import nbytes
from ..model import GPT
from ..nn import Linear, Module
from ..tensor import no_grad


def linear_layers(model: Module, kind=Linear) -> list[tuple[str, Module, str, Module]]:
    """``[(full name, parent, attribute, layer)]`` for every ``kind`` layer, in model order."""
    out = []

    def walk(m: Module, prefix: str):
        for attr, child in m._modules.items():
            if isinstance(child, kind):
                out.append((prefix + attr, m, attr, child))
            else:
                walk(child, f"{prefix}{attr}.")
    walk(model, "")
    return out


def swap(parent: Module, attr: str, new: Module) -> Module:
    """Put ``new`` where ``parent.attr`` was (same name, same place in the forward)."""
    setattr(parent, attr, new)
    return new


def copy_model(model: GPT) -> GPT:
    """A new GPT with ``model``'s config and weights, built off every device."""
    fresh = contextvars.Context().run(lambda: GPT(model.config))
    fresh.load_state_dict(model.state_dict())
    return fresh.eval()


@dataclasses.dataclass
class Cost:
    """What one forward of a model costs: weight bytes held, FLOPs (by op), compute time (s)."""

    parameter_bytes: int
    flops: int
    matmul_flops: int
    flops_by_op: dict
    time: float

    def saved_from(self, base: "Cost") -> dict:
        """Fractions of ``base``'s bytes and FLOPs this model does not need."""
        return {"bytes": 1 - self.parameter_bytes / base.parameter_bytes, "flops": 1 - self.flops / base.flops,
                "matmul_flops": 1 - self.matmul_flops / base.matmul_flops, "time": 1 - self.time / base.time}


def measure(model: Module, idx) -> Cost:
    """Place ``model``'s weights on a fresh simulated device, run one forward of token ids
    ``idx`` (B, T) there, and read the device's accounting. Parameters return to the device
    they were on."""
    dev = Device(trace=False)
    placed = []
    try:
        for p in model.parameters():
            placed.append((p, p.device))
            p.place(dev)
        for name, m in ((n, m) for n, m in _named_modules(model) if hasattr(m, "storage")):
            for part, a in m.storage().items():
                dev.memory.alloc(nbytes(a), "parameters", f"{name}.{part}")
        held = dev.memory.current["parameters"]
        with dev, no_grad():
            was = model.training
            model.eval()
            model(np.asarray(idx))
            model.train(was)
        return Cost(held, dev.flops, dev.matmul_flops, dict(dev.flops_by_op), dev.clock.now("compute"))
    finally:
        for p, prev in placed:
            p.unplace()
            if prev is not None:
                p.place(prev)


def _named_modules(m: Module, prefix: str = ""):
    yield prefix.rstrip("."), m
    for attr, child in m._modules.items():
        yield from _named_modules(child, f"{prefix}{attr}.")
