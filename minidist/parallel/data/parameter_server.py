"""Parameter-server data parallel: the naive version, kept beside DDP to compare against.

The oldest way to train data parallel (Li et al. 2014, "Scaling Distributed Machine
Learning with the Parameter Server"; here with the server being rank 0):

1. every rank runs forward and backward on its slice of the global batch;
2. the gradients are **reduced onto the root** (rank 0), which averages them;
3. only the root holds optimizer states and takes the optimizer step;
4. the root **broadcasts** the updated parameters back to everyone.

Not used in practice for GPUs: the root's link carries ``(p−1)·Ψ`` in and ``(p−1)·Ψ`` out
per step while the others idle (the linear algorithms below make that visible in the
trace), against ``2·(p−1)/p·Ψ`` per rank for a ring all-reduce. But it is the easiest
version to reason about, and DDP must train to exactly the same weights.
"""
from __future__ import annotations

import numpy as np

from ... import distributed as dist
from ...defaults import PARAMETER_SERVER
from .base import LocalStrategy
from .buckets import Bucket

ROOT = 0


class ParameterServer(LocalStrategy):
    name = PARAMETER_SERVER
    overflow_over_comm = True         # agreed before the reduce: each rank holds only its own gradients

    def __init__(self, model, optimizer, comm, algorithm: str = "linear", clip: float = 0.0, precision=None):
        super().__init__(model, optimizer, comm, clip, precision)
        self.algorithm = algorithm
        self.flat = Bucket(0, self.params, 1)          # the whole model as one flat buffer (no padding)

    def setup_precision(self) -> None:
        """Only the server keeps fp32 masters and optimizer states; the workers just hold
        the model in fp16/bf16."""
        if self.rank == ROOT:
            super().setup_precision()
        else:
            self.precision.cast_model(self.params)

    def step(self) -> None:
        b, dev = self.flat, self.device
        overflow = None
        if self.precision is not None:
            # The mean on the server is non-finite exactly when some rank's gradient is, so the
            # ranks can agree on skipping before the reduce, and the workers' loss scale
            # follows the server's.
            grads = [p.grad for p in self.params]
            self.precision.round_(grads)
            overflow = self.precision.found_overflow(grads, self.comm)
        grads = b.flat_grads()                                              # (Ψ,)
        with self.buffer(grads.size * b.bytes_per_element, "ps gradients"):
            # why: the server needs the average of every rank's gradients
            mean = dist.reduce(self.comm, grads, root=ROOT, op="mean", algorithm=self.algorithm,
                               bytes_per_element=b.bytes_per_element)
        if self.rank == ROOT:
            b.copy_into_grads(mean)
            self.update_whole(overflow)                 # only the server holds optimizer states
        elif self.precision is not None:
            self.precision.end_step(overflow)           # the scale moves on every rank alike
        self.snapshot()
        self.optimizer.zero_grad()
        flat = b.flat_params() if self.rank == ROOT else None
        with self.buffer(b.numel * b.bytes_per_element, "ps parameters"):
            # why: the workers' parameters are stale until the server's new ones arrive
            new = dist.broadcast(self.comm, flat, root=ROOT, algorithm=self.algorithm,
                                 bytes_per_element=b.bytes_per_element)
        if self.rank != ROOT:
            b.copy_into_params(np.asarray(new).reshape(-1))
        dev.clock.wait("compute", dev.clock.now("comm"))

    def expected_model_states(self) -> dict:
        out = super().expected_model_states()
        if self.rank != ROOT:
            out["optimizer_states"] = 0
        return out

    def expected_bytes_sent(self) -> int:
        """Linear reduce and broadcast: a worker sends Ψ, the root (p−1)·Ψ; and the one-element
        all-reduces (:meth:`LocalStrategy.scalar_bytes`: the overflow flag, and on the root the
        clipping norm over ``grid.mp``)."""
        p, n = self.world_size, self.numel * self.flat.bytes_per_element
        return ((p - 1) * n if self.rank == ROOT else n if p > 1 else 0) + self.scalar_bytes()

    def clips_here(self) -> bool:
        """Only the root updates, so only the root clips (and joins the norm's all-reduce over
        ``grid.mp``, whose other ranks are roots too); a worker receives the clipped result."""
        return self.rank == ROOT
