"""ZeRO stage 1: optimizer states sharded across the data-parallel ranks.

Rajbhandari et al. 2020, "ZeRO: Memory Optimizations Toward Training Trillion Parameter
Models", §5.1 (P_os). With N ranks each rank keeps optimizer states (Adam's m and v, the
fp32 master weights in mixed precision) for only 1/N of the parameters, and so only
updates that 1/N:

1. backward as usual: every rank accumulates the **full** gradient (w·Ψ bytes);
2. each bucket is **reduce-scattered** (:mod:`minidist.distributed.reduce_scatter`): rank r
   receives the average over ranks of *its* chunk only — ``(p−1)/p`` of the bucket sent;
   in a flat-buffer implementation the result lands in place in the gradient buffer, so it
   costs no extra memory and none is charged;
3. rank r runs the optimizer's ``update`` on its chunk of the flat parameters with its
   chunk of the optimizer state — the very same function :class:`~minidist.optim.Adam`
   applies to a whole tensor;
4. the updated chunks are **all-gathered** so every rank has the whole new model —
   another ``(p−1)/p``. Total 2·(p−1)/p·Ψ per rank: the same as DDP's all-reduce (§7).

Memory per rank: ``wΨ + wΨ + K·S`` where ``S = Σ_b ceil(n_b/p)`` is the shard (see
:mod:`.buckets` for the padding). ``allgather_bucket_size`` groups consecutive buckets into
one all-gather; ``overlap_comm`` launches each bucket's reduce-scatter from the gradient
hooks instead of after backward. With ``offload`` the update runs on the host
(:mod:`.offload`).

In mixed precision (DeepSpeed's ``FP16_DeepSpeedZeroOptimizer``) the fp32 master weights
are part of the sharded optimizer state: rank r cuts its chunk out of the fp32 model
*before* the model is rounded to fp16, and keeps only that (4·S bytes, so K = 4 + 8 = 12
with Adam). At the step it rounds its reduced gradient chunk to fp16, all-reduces a
one-element overflow flag (MAX) so that every rank skips the same steps — a skipped step
needs no all-gather, nothing changed — unscales, updates its fp32 master chunk and rounds
it into its fp16 parameter chunk, which the all-gather then sends at 2 bytes per element.
"""
from __future__ import annotations

import numpy as np

from ... import distributed as dist
from ...defaults import ALLGATHER_BUCKET_SIZE, REDUCE_BUCKET_SIZE, ZERO1
from ...numerics.quantize import quantize
from .base import LocalStrategy
from .buckets import make_buckets, shard_elements
from .offload import HostOptimizer


class ZeRO1(LocalStrategy):
    name = ZERO1
    stage = 1
    overflow_over_comm = True         # each rank checks only its reduced chunk

    def __init__(self, model, optimizer, comm, reduce_bucket_size: int = REDUCE_BUCKET_SIZE,
                 allgather_bucket_size: int = ALLGATHER_BUCKET_SIZE, overlap_comm: bool = False,
                 offload: bool = False, algorithm: str = "ring", clip: float = 0.0, precision=None):
        if not optimizer.shardable:
            raise ValueError(f"{type(optimizer).__name__} needs whole-tensor norms and cannot update a "
                             f"flat shard; use Adam, AdamW or SGD with ZeRO")
        self.offload = offload
        super().__init__(model, optimizer, comm, clip, precision)
        self.overlap_comm, self.algorithm = overlap_comm, algorithm
        self.allgather_bucket_size = allgather_bucket_size
        self.buckets = self.make_buckets(reduce_bucket_size)
        self.shard = shard_elements(self.buckets)
        self._bucket_of = {id(p): b for b in self.buckets for p in b.params}
        self.state: dict[int, dict] = {}                 # bucket index -> optimizer state of my chunk
        self.grad_shards: dict[int, np.ndarray] = {}     # bucket index -> my reduced gradient chunk
        self._works: list = []                           # (work, buffer handle) in flight
        self._done: set[int] = set()                     # buckets reduce-scattered this backward
        self.master_shards = self.cut_master_shards()    # bucket index -> my fp32 master chunk
        self.host = HostOptimizer(self) if offload else None
        for p in self.params:
            p.register_post_accumulate_grad_hook(self._on_grad_ready)

    def make_buckets(self, size):
        return make_buckets(self.params, size, self.world_size)

    # -- mixed precision: my shard of the fp32 masters -------------------------------------
    def setup_precision(self) -> None:
        """Round the model to fp16/bf16, keeping the fp32 values until the shards are cut."""
        self._fp32 = self.precision.cast_model(self.params)

    def cut_master_shards(self) -> dict:
        """My chunk of every bucket's fp32 master weights (charged as optimizer state; on the
        host with offload, which charges it there). The full fp32 copy is dropped."""
        if self.precision is None:
            return {}
        shards = {}
        for b in self.buckets:
            lo, hi = self.my_range(b)
            shards[b.index] = b.flatten([self._fp32[id(p)] for p in b.params])[lo:hi].copy()     # (c,) fp32
            if not self.offload:
                self.device.memory.alloc(shards[b.index].nbytes, "optimizer_states", f"master shard {b.index}")
        del self._fp32
        return shards

    def my_range(self, b) -> tuple[int, int]:
        return b.shard_range(self.rank)

    def local_squared_norm(self, shards, params=None) -> float:
        """Σ g² (float64) of my gradient chunks, leaving out the elements of parameters another
        model-parallel rank counts (see :meth:`count_in_norm`): a chunk may cut several."""
        if not self.norm_skip:
            return super().local_squared_norm(shards, [None] * len(shards))
        pieces = []
        for b, shard in zip(self.buckets, shards):
            lo, hi = self.my_range(b)
            for p, off, n in zip(b.params, b.offsets, b.numels):
                s, e = max(lo, off), min(hi, off + n)          # my chunk ∩ this parameter
                if s < e and id(p) not in self.norm_skip:
                    pieces.append(shard[s - lo:e - lo])
        return super().local_squared_norm(pieces, [None] * len(pieces))

    # -- gradients: reduce-scatter ---------------------------------------------------------
    def _on_grad_ready(self, p) -> None:
        b = self._bucket_of[id(p)]
        if b.grad_ready() and self.sync_gradients and self.overlap_comm:
            self.reduce_scatter(b)

    def reduce_scatter(self, b) -> None:
        flat = b.flat_grads()                                   # (p·c,) padded
        handle = self.device.memory.alloc(flat.size * b.bytes_per_element, "buffers", f"rs bucket {b.index}")
        # why: each rank only needs the averaged gradient of the chunk whose optimizer state it owns
        work = dist.reduce_scatter(self.comm, flat, op="mean", algorithm=self.algorithm, async_op=True,
                                   bytes_per_element=b.bytes_per_element)
        self.accumulate_shard(b, work.result)
        self._works.append((work, handle))
        self._done.add(b.index)
        self.after_reduce(b)

    def accumulate_shard(self, b, chunk) -> None:
        """Stage 1: the reduced chunk lives in place in the full gradient (no new bytes)."""
        self.grad_shards[b.index] = chunk

    def after_reduce(self, b) -> None:
        """Stage 1 keeps the full gradient until the step (stage 2 frees it here)."""

    def after_backward(self) -> None:
        if self.sync_gradients:
            for b in self.buckets:
                if b.index not in self._done:
                    self.reduce_scatter(b)
        for b in self.buckets:
            b.ready = 0
        self._done.clear()

    # -- the sharded optimizer step --------------------------------------------------------
    def step(self) -> None:
        dev = self.device
        for work, handle in self._works:
            work.wait()                             # compute waits for every reduce-scatter
            dev.memory.free(handle)
        self._works.clear()
        shards = [self.grad_shards[b.index] for b in self.buckets]
        if self.precision is not None:
            self.precision.round_(shards)           # the reduced chunk, held in fp16/bf16
            if self.precision.found_overflow(shards, self.comm):
                self.release_gradients()            # skipped on every rank: nothing to gather
                self.precision.end_step(True)
                return
            self.precision.unscale_(shards)
        self.clip_(shards, sharded=True)
        held = self.hold_updated_shards()
        params = {}
        done_at = dev.clock.now("compute")
        for b in self.buckets:
            params[b.index] = p_shard = self.param_shard(b)
            if self.host is not None:
                done_at = max(done_at, self.host.update(b, p_shard, self.grad_shards[b.index]))
            else:
                self.charge_update(b.chunk)
                target = self.master_shards.get(b.index, p_shard)     # the fp32 master in mixed precision
                self.optimizer.update(target, self.grad_shards[b.index], self.state_of(b),
                                      self.optimizer.param_groups[0])
                if target is not p_shard:
                    p_shard[...] = quantize(target, self.precision.dtype)
        dev.clock.wait("compute", done_at)          # offload: the new parameters are back on the device
        self.snapshot()
        self.release_gradients()
        self.gather_parameters(params)
        if held is not None:
            dev.memory.free(held)
        if self.precision is not None:
            self.precision.end_step(False)

    def hold_updated_shards(self) -> int | None:
        """Charge the buffer my updated chunks wait in until the all-gather (a memory handle).
        Stages 1 and 2 cut them out of the full parameters; stage 3 overrides: it updates the
        shard it keeps, in place."""
        return self.device.memory.alloc(self.shard * self.buckets[0].bytes_per_element, "buffers",
                                        "updated parameter shards")

    def param_shard(self, b) -> np.ndarray:
        """My chunk of the bucket's flat parameters (stage 3 keeps it; here it is cut out)."""
        lo, hi = self.my_range(b)
        return b.flat_params()[lo:hi].copy()                    # (c,)

    def state_of(self, b) -> dict:
        st = self.state.get(b.index)
        if st is None:
            dtype = np.float32 if self.precision is not None else b.dtype
            st = self.state[b.index] = self.optimizer.init_state((b.chunk,), dtype)
            for k, a in st.items():
                if isinstance(a, np.ndarray):
                    self.device.memory.alloc(a.nbytes, "optimizer_states", f"bucket {b.index}.{k}")
        return st

    def release_gradients(self) -> None:
        self.grad_shards.clear()
        self.optimizer.zero_grad()

    def gather_parameters(self, params: dict) -> None:
        """All-gather the updated chunks, ``allgather_bucket_size`` elements per call."""
        group, size = [], 0
        for b in self.buckets + [None]:
            if b is None or (group and size + b.padded > self.allgather_bucket_size):
                self._gather_group(group, params)
                group, size = [], 0
            if b is not None:
                group.append(b)
                size += b.padded

    def _gather_group(self, group, params) -> None:
        mine = np.concatenate([params[b.index] for b in group])         # (Σ c_b,)
        w = group[0].bytes_per_element
        with self.buffer(mine.size * self.world_size * w, "all-gather buffer"):
            # why: every rank updated only its chunk; all need the whole new model for the next forward
            full = dist.all_gather(self.comm, mine, algorithm=self.algorithm, bytes_per_element=w)
        full = full.reshape(self.world_size, mine.size)                 # (p, Σ c_b): rank-major
        col = 0
        for b in group:
            b.copy_into_params(full[:, col:col + b.chunk].reshape(-1))  # (p·c_b,) the bucket again
            col += b.chunk

    # -- formulas ---------------------------------------------------------------------------
    def expected_model_states(self) -> dict:
        K, S = self.state_bytes_per_element(), self.shard
        params, grads = self.expected_parameter_bytes(), self.expected_gradient_bytes()
        if self.offload:   # host: master of my shard + its optimizer state + gradient copy (fp32; float64 runs: 8 B)
            m = 4 if self.precision is not None else self.buckets[0].bytes_per_element
            host = (m + self.moment_bytes_per_element() + m) * S
            return {"parameters": params, "gradients": grads, "optimizer_states": 0, "host": host}
        return {"parameters": params, "gradients": grads, "optimizer_states": K * S, "host": 0}

    def expected_parameter_bytes(self) -> int:
        """Stages 1 and 2 hold the whole model, w·Ψ and the frozen parameters (stage 3 overrides: w·S)."""
        return self.buckets[0].bytes_per_element * self.numel + self.frozen_bytes

    def expected_gradient_bytes(self) -> int:
        """Stage 1 holds the whole gradient, w·Ψ (stage 2 overrides: w·S)."""
        return self.buckets[0].bytes_per_element * self.numel

    def expected_bytes_sent(self, micro_batches: int = 1) -> int:
        """Ring reduce-scatter + all-gather: (p−1)·S elements each (stage 2/3 override)."""
        p, w = self.world_size, self.buckets[0].bytes_per_element
        return (2 * (p - 1) * self.shard * w if p > 1 else 0) + self.scalar_bytes()
