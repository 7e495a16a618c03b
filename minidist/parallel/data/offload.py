"""ZeRO-Offload: the optimizer step on the host (CPU), its states in host memory.

Ren et al. 2021, "ZeRO-Offload: Democratizing Billion-Scale Model Training", §4. The
optimizer states are the biggest model state (K = 12 bytes per parameter with Adam in
mixed precision against 2 + 2 for parameters and gradients), and the update is cheap
elementwise work, so ZeRO-Offload keeps them — plus an fp32 master copy of the parameters
— in the host's memory and runs the update on the CPU:

1. the rank's (reduced) gradient shard is copied **device → host** (PCIe, "d2h" stream);
2. the host updates its fp32 master shard with the same ``optimizer.update`` ("host"
   stream, at ``spec.host_flops``);
3. the updated shard goes **host → device** ("h2d" stream) and the compute stream waits
   for it before the parameters are all-gathered.

In mixed precision the host's fp32 copy *is* the master (its initial values are taken
before the model is rounded to fp16), gradients travel down at 2 bytes per element and
the parameters come back rounded to fp16/bf16 — DeepSpeed's CPU-Adam arrangement.

Each transfer costs ``bytes / spec.host_bandwidth`` of simulated time on its own stream;
the host pool (``device.host``) holds, per element of the rank's shard, 4 bytes of master
parameters, the optimizer state (K) and 4 bytes of gradient copy — the ``host`` figure of
:func:`minidist.estimate.model_state_memory`. The device holds no optimizer state at all.
"""
from __future__ import annotations

import numpy as np

from ...numerics.quantize import quantize
from .base import OPTIMIZER_FLOPS_PER_ELEMENT


class HostOptimizer:
    """The host half of one rank's ZeRO-Offload: master shards, states, the update."""

    def __init__(self, strategy):
        self.strategy = strategy
        self.master: dict[int, np.ndarray] = {}     # bucket index -> host copy of my parameter chunk
        self.grads: dict[int, np.ndarray] = {}      # bucket index -> host copy of my gradient chunk
        self.state: dict[int, dict] = {}

    def _allocate(self, b, param_shard) -> None:
        s = self.strategy
        host, opt = s.device.host, s.optimizer
        if b.index in s.master_shards:              # mixed precision: the fp32 values from before rounding
            self.master[b.index] = s.master_shards.pop(b.index)
        else:
            self.master[b.index] = param_shard.astype(np.float32 if param_shard.dtype != np.float64 else np.float64)
        self.grads[b.index] = np.zeros_like(self.master[b.index])
        host.alloc(self.master[b.index].nbytes, "parameters", f"master shard {b.index}")
        host.alloc(self.grads[b.index].nbytes, "gradients", f"host gradient shard {b.index}")
        st = self.state[b.index] = opt.init_state((b.chunk,), self.master[b.index].dtype)
        for k, a in st.items():
            if isinstance(a, np.ndarray):
                host.alloc(a.nbytes, "optimizer_states", f"bucket {b.index}.{k}")

    def update(self, b, param_shard: np.ndarray, grad_shard: np.ndarray) -> float:
        """Offloaded update of one bucket's chunk; returns when its new parameters are back."""
        s = self.strategy
        dev, spec = s.device, s.device.spec
        clock = dev.clock
        if b.index not in self.master:
            self._allocate(b, param_shard)
        w = b.bytes_per_element
        # why (d2h): the optimizer lives on the host, so the reduced gradient chunk must go there
        _, t_grad = clock.run("d2h", grad_shard.size * w / spec.host_bandwidth, f"d2h gradient shard {b.index}",
                              "memcpy", start_after=clock.now("compute"), args={"bytes": grad_shard.size * w})
        self.grads[b.index][...] = grad_shard
        _, t_step = clock.run("host", OPTIMIZER_FLOPS_PER_ELEMENT * b.chunk / spec.host_flops,
                              f"host optimizer.step {b.index}", "compute", start_after=t_grad)
        s.optimizer.update(self.master[b.index], self.grads[b.index], self.state[b.index],
                           s.optimizer.param_groups[0])
        # why (h2d): forward needs the new parameters on the device
        _, t_back = clock.run("h2d", param_shard.size * w / spec.host_bandwidth, f"h2d parameter shard {b.index}",
                              "memcpy", start_after=t_step, args={"bytes": param_shard.size * w})
        master = self.master[b.index]
        param_shard[...] = master if s.precision is None else quantize(master, s.precision.dtype)
        return t_back
