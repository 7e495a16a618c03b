"""ZeRO stage 2: optimizer states *and gradients* sharded.

Rajbhandari et al. 2020, §5.2 (P_os+g). Stage 1 still holds every rank's full gradient
until the step; but a rank only ever *uses* the gradient of its own chunk. So as soon as a
bucket's gradients are complete in backward (a post-accumulate-grad hook, as in DDP) the
bucket is reduce-scattered, the result is **added into a gradient shard** of ``S``
elements that lives for the whole step, and the full gradient of the bucket is **freed at
once** — on the memory timeline the "gradients" curve rises by one bucket and drops back,
bucket after bucket, instead of climbing to wΨ. (With ``overlap_comm: false`` the
reduce-scatters wait until backward is over, and so does the freeing: the full gradient
is then held at the end of backward, as in stage 1 — the price of not overlapping.)

With gradient accumulation there is no full gradient to accumulate into, so every
micro-step reduce-scatters (``(p−1)/p·Ψ`` each) and accumulates into the shard; the
parameters are all-gathered once per step. Memory per rank ``wΨ + (w + K)·S``; traffic
``2·(p−1)/p·Ψ`` per step without accumulation, as DDP (§7).
"""
from __future__ import annotations

from ...defaults import ZERO2
from .zero1 import ZeRO1


class ZeRO2(ZeRO1):
    name = ZERO2
    stage = 2

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._grad_handles: dict[int, int] = {}

    def begin_micro(self, micro, n_micro) -> None:
        self.sync_gradients = True          # a sharded gradient cannot be accumulated unreduced

    def accumulate_shard(self, b, chunk) -> None:
        shard = self.grad_shards.get(b.index)
        if shard is None:                   # first micro-step: the shard is born (w·c bytes)
            self.grad_shards[b.index] = chunk.copy()
            self._grad_handles[b.index] = self.device.memory.alloc(
                chunk.size * b.bytes_per_element, "gradients", f"gradient shard {b.index}")
        else:
            shard += chunk                  # later micro-steps accumulate into it

    def after_reduce(self, b) -> None:
        for p in b.params:                  # the full gradient of this bucket is no longer needed
            p.grad = None

    def release_gradients(self) -> None:
        for h in self._grad_handles.values():
            self.device.memory.free(h)
        self._grad_handles.clear()
        super().release_gradients()

    def expected_gradient_bytes(self) -> int:
        """Only my shard of the gradient: w·S."""
        return self.buckets[0].bytes_per_element * self.shard

    def expected_bytes_sent(self, micro_batches: int = 1) -> int:
        """A reduce-scatter per micro-step, one all-gather per step."""
        p, w = self.world_size, self.buckets[0].bytes_per_element
        return ((micro_batches + 1) * (p - 1) * self.shard * w if p > 1 else 0) + self.scalar_bytes()

