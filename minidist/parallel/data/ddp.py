"""DDP: gradients all-reduced in buckets, each launched the moment its gradients are ready.

PyTorch's DistributedDataParallel (Li et al. 2020, "PyTorch Distributed: Experiences on
Accelerating Data Parallel Training", §3.2):

1. every rank holds the whole model and a whole optimizer (replicated states);
2. parameters are grouped into buckets in reverse order (:mod:`.buckets`), and a
   *post-accumulate-grad hook* on every parameter counts how many of its bucket's
   gradients are complete;
3. when a bucket is complete its all-reduce is launched asynchronously on the **comm
   stream** while backward keeps computing the earlier layers on the compute stream — the
   overlap you see in the trace; before the optimizer step the compute stream waits for
   every bucket (``work.wait()``);
4. with gradient accumulation the first ``k−1`` micro-steps run under ``no_sync``: no hook
   launches anything, gradients accumulate locally, and only the last backward
   communicates.

``overlap_comm: false`` keeps the same buckets but launches all of them after backward, so
the step pays backward + communication back to back. Per rank and step a ring all-reduce
sends ``2·(p−1)/p`` of every bucket (``2·(p−1)·ceil(n_b/p)`` elements with padding), at 2
bytes per element in mixed precision: the gradients are rounded to fp16/bf16 before they
travel, and the averaged result is rounded again. (A GPU's NCCL would also *add* in fp16;
here the sums are fp32, rounded once.)
"""
from __future__ import annotations

from ... import distributed as dist
from ... import defaults
from .base import LocalStrategy
from .buckets import make_buckets


class DDP(LocalStrategy):
    name = defaults.DDP

    def __init__(self, model, optimizer, comm, bucket_size: int = defaults.DDP_BUCKET_SIZE, overlap_comm: bool = True,
                 algorithm: str = "ring", clip: float = 0.0, precision=None):
        super().__init__(model, optimizer, comm, clip, precision)
        self.overlap_comm, self.algorithm = overlap_comm, algorithm
        self.buckets = make_buckets(self.params, bucket_size, self.world_size)
        self._bucket_of = {id(p): b for b in self.buckets for p in b.params}
        self._launched: dict[int, tuple] = {}      # bucket index -> (bucket, buffer handle, work)
        for p in self.params:
            p.register_post_accumulate_grad_hook(self._on_grad_ready)

    def _on_grad_ready(self, p) -> None:
        b = self._bucket_of[id(p)]
        if b.grad_ready() and self.sync_gradients and self.overlap_comm:
            self._launch(b)

    def _launch(self, b) -> None:
        flat = b.flat_grads()                                   # (p·c,) the bucket's gradients
        handle = self.device.memory.alloc(flat.size * b.bytes_per_element, "buffers", f"ddp bucket {b.index}")
        # why: average this bucket's gradients over the ranks now, while backward goes on
        work = dist.all_reduce(self.comm, flat, op="mean", algorithm=self.algorithm, async_op=True,
                               bytes_per_element=b.bytes_per_element)
        self._launched[b.index] = (b, handle, work)

    def after_backward(self) -> None:
        if not self.sync_gradients:
            return                                              # no_sync micro-step
        for b in self.buckets:                                  # overlap off, or a bucket never completed
            if b.index not in self._launched:
                self._launch(b)
            b.ready = 0

    def step(self) -> None:
        for index in sorted(self._launched):
            b, handle, work = self._launched[index]
            b.copy_into_grads(work.wait())      # compute waits for the bucket's all-reduce to finish
            self.device.memory.free(handle)
        self._launched.clear()
        super().step()

    def expected_bytes_sent(self) -> int:
        """Ring all-reduce of every bucket: 2·(p−1)·c_b elements each; and the one-element
        all-reduces over the grid (:meth:`LocalStrategy.scalar_bytes`: the clipping norm over
        ``grid.mp``, the overflow flag over the world, under tensor/pipeline parallelism)."""
        p = self.world_size
        return (sum(2 * (p - 1) * b.chunk * b.bytes_per_element for b in self.buckets) if p > 1 else 0) \
            + self.scalar_bytes()
