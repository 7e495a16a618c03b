"""What every data-parallel strategy shares: the step protocol the Trainer drives, memory
helpers, gradient clipping over shards, and the model-state snapshot.

The Trainer calls, for one optimizer step of ``k`` micro-batches::

    strategy.begin_micro(micro, k)     # micro-steps 0..k-2 are "no_sync" (DDP's no_sync())
    loss.backward()                    # hooks of the strategy fire as gradients complete
    strategy.after_backward()          # launch what was not launched from hooks
    ...
    strategy.step()                    # wait for comm, clip, update, release gradients

:class:`LocalStrategy` is plain single-rank training, the reference that every strategy
must match step by step (CS336 assignment 2's contract).

**Model-state snapshot.** ``strategy.model_states`` is the memory the rank holds in each
model-state category *at the optimizer step* — after the update, before gradients are
released — when parameters, gradients and optimizer states all exist at once. This is
the moment the ZeRO formulas describe (Rajbhandari et al. 2020, §5): it is compared with
:func:`minidist.estimate.model_state_memory` in the report and the tests.
"""
from __future__ import annotations

import contextlib

import numpy as np

from ... import distributed as dist
from ...defaults import SINGLE
from ...device import current_device
from ...precision.mixed import MixedPrecision, clip_by_norm_, squared_norm
from .buckets import element_bytes

MODEL_STATES = ("parameters", "gradients", "optimizer_states")
OPTIMIZER_FLOPS_PER_ELEMENT = 10      # ~elementwise FLOPs of one Adam update per element


class LocalStrategy:
    """One rank, no communication: backward, clip, ``optimizer.step()``, ``zero_grad()``."""

    name = SINGLE
    stage = 0
    offload = False

    def __init__(self, model, optimizer, comm=None, clip: float = 0.0, precision=None):
        self.model, self.optimizer, self.comm = model, optimizer, comm
        self.device = comm.device if comm is not None else current_device()
        self.world_size = comm.size if comm is not None else 1
        self.rank = comm.rank if comm is not None else 0
        self.clip = float(clip)
        # only what trains: a frozen parameter (requires_grad False: a fine-tuned model's base,
        # minidist.peft) gets no gradient, no optimizer state, no bucket — it is counted as a parameter only
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.frozen = [p for p in model.parameters() if not p.requires_grad]
        self.frozen_bytes = sum(element_bytes(p) * p.size for p in self.frozen)
        self.numel = sum(p.size for p in self.params)
        self.names = {id(p): n for n, p in model.named_parameters()}
        self.sync_gradients = True
        self.model_states: dict | None = None
        self.norm_group, self.norm_skip = None, set()   # see count_in_norm (tensor/pipeline parallelism)
        self.precision, self.mp = precision, None
        if precision is not None:
            self.setup_precision()
            for p in self.params:                   # registered first: runs before the strategy's hook
                p.register_post_accumulate_grad_hook(self._round_grad)

    # -- the protocol -------------------------------------------------------------------------
    def begin_micro(self, micro: int, n_micro: int) -> None:
        """Gradients are synchronised only in the last micro-step (no_sync before it)."""
        self.sync_gradients = micro == n_micro - 1

    @contextlib.contextmanager
    def no_sync(self):
        """torch's ``DistributedDataParallel.no_sync()``: backward inside accumulates local
        gradients without communicating; the first backward after it synchronises them all::

            with strategy.no_sync():
                loss_0.backward(); strategy.after_backward()     # no message
            loss_1.backward(); strategy.after_backward()         # the reduction, once

        (ZeRO-2 and 3 cannot hold an unreduced full gradient and keep reducing every micro-step.)"""
        before, self.sync_gradients = self.sync_gradients, self.stage >= 2
        try:
            yield
        finally:
            self.sync_gradients = before

    def after_backward(self) -> None:
        pass

    def step(self) -> None:
        self.update_whole()
        self.snapshot()
        self.optimizer.zero_grad()

    def update_whole(self, overflow: bool | None = None) -> None:
        """The optimizer step on whole tensors: clip and ``optimizer.step()``, or in mixed
        precision :meth:`MixedPrecision.step` (round, overflow check, unscale, clip, update
        the fp32 masters, copy them back rounded — or skip)."""
        self.charge_update(self.numel)
        if self.mp is not None:
            self.mp.step(overflow)
            return
        self.clip_([p.grad for p in self.params], sharded=False, params=self.params)
        self.optimizer.step()

    # -- mixed precision ------------------------------------------------------------------------
    def setup_precision(self) -> None:
        """Whole-tensor fp32 masters and optimizer states (single rank, DDP). ZeRO overrides
        this to keep only its shard of the masters."""
        # comm=None: after the all-reduce every rank holds the same gradients, so the same
        # overflow verdict; no flag needs to travel (DeepSpeed's FP16_Optimizer does the same)
        self.mp = MixedPrecision(self.model, self.optimizer, self.precision, gradient_clipping=self.clip,
                                 clip_=lambda grads: self.clip_(grads, sharded=False, params=self.mp.params()))

    def _round_grad(self, p) -> None:
        """The gradient of an fp16 parameter is an fp16 tensor: round it where it is
        accumulated (with accumulation steps, every micro-step's sum is rounded, as an fp16
        ``.grad`` buffer would)."""
        self.precision.round_([p.grad])

    def scale_loss(self, loss):
        """The tensor backward starts from: ``loss · S`` in fp16, ``loss`` otherwise."""
        return loss if self.precision is None else self.precision.scale_loss(loss)

    def full_parameters(self) -> dict:
        """name → a copy of every parameter (a collective for ZeRO-3: call it on every rank)."""
        return {n: p.data.copy() for n, p in self.model.named_parameters()}

    # -- helpers ------------------------------------------------------------------------------
    def charge_update(self, elements: int) -> None:
        if self.device is not None:
            self.device.compute("optimizer.step", OPTIMIZER_FLOPS_PER_ELEMENT * int(elements))

    def count_in_norm(self, group, duplicates) -> None:
        """Under tensor/pipeline parallelism the clipping norm is over the whole model, which
        no rank holds: each rank of the model-parallel ``group`` (``grid.mp``) sums the squares
        of the gradients it owns uniquely, the sums are all-reduced, and ``duplicates`` — the
        parameters another rank of the group already counts (replicated LayerNorms and biases
        on tp ranks > 0, the last stage's copy of the tied embedding) — are left out.
        Megatron-LM's ``clip_grad_norm_fp32`` with ``param_is_not_tensor_parallel_duplicate``
        and ``param_is_not_shared`` (Shoeybi et al. 2019)."""
        self.norm_group = group if group is not None and group.size > 1 else None
        self.norm_skip = {id(p) for p in duplicates}

    def local_squared_norm(self, grads, params) -> float:
        """Σ g² (float64) of this rank's whole-tensor gradients, duplicates left out."""
        return squared_norm(g for p, g in zip(params, grads) if id(p) not in self.norm_skip)

    def clip_(self, grads, sharded: bool, params=None) -> None:
        """Scale gradients so that their global L2 norm is at most ``clip`` (if clip > 0).

        ``grads``: whole tensors aligned with ``params``, or (``sharded``) this rank's flat
        shards. A rank holds only part of the sum of squares when the model is split over a
        model-parallel group or the gradients over the data-parallel ranks: the parts are
        all-reduced first (one float64 element per group: DeepSpeed and Megatron do the same)."""
        if self.clip <= 0:
            return
        sq = np.array([self.local_squared_norm(grads, params)])   # float64: the same coefficient as DDP's
        if self.norm_group is not None:
            # why: the other tp shards / pipeline stages of the model are on the other ranks of grid.mp
            sq = dist.all_reduce(self.norm_group, sq, op="sum", algorithm="ring")
        if sharded and self.world_size > 1:
            # why: the norm is over the whole model, and each rank holds only its shard
            sq = dist.all_reduce(self.comm, sq, op="sum", algorithm="ring")
        clip_by_norm_(grads, float(np.sqrt(sq[0])), self.clip)

    def snapshot(self) -> None:
        """Record the model-state bytes held right now (see the module docstring)."""
        if self.device is None:
            return
        cur = self.device.memory.current
        host = self.device.host.current
        self.model_states = {c: int(cur[c]) for c in MODEL_STATES}
        self.model_states["total"] = sum(self.model_states[c] for c in MODEL_STATES)
        self.model_states["host"] = int(sum(host[c] for c in MODEL_STATES))

    @contextlib.contextmanager
    def buffer(self, nbytes: int, name: str):
        """A communication buffer held for the duration of the ``with`` block ("buffers")."""
        h = self.device.memory.alloc(int(nbytes), "buffers", name)
        try:
            yield
        finally:
            self.device.memory.free(h)

    # -- what the formulas say for this rank ----------------------------------------------------
    def expected_model_states(self) -> dict:
        """Exact bytes of each model state this strategy should hold at the step, padding
        included (subclasses override). Here: everything replicated, ``(w + w + K)·Ψ`` —
        w = 2 and K = 12 for Adam in mixed precision, w = 4 and K = 8 in fp32 — with Ψ the
        trainable elements, plus the frozen parameters' bytes."""
        w = _bytes(self.params[0])
        states = self.state_bytes_per_element() * self.numel
        if getattr(self.optimizer, "paged", False):        # QLoRA's paged optimizer: states in the host pool
            return {"parameters": w * self.numel + self.frozen_bytes, "gradients": w * self.numel,
                    "optimizer_states": states - self.moment_bytes_per_element() * self.numel,
                    "host": self.moment_bytes_per_element() * self.numel}
        return {"parameters": w * self.numel + self.frozen_bytes, "gradients": w * self.numel,
                "optimizer_states": states, "host": 0}

    def state_bytes_per_element(self) -> int:
        """K: optimizer-state bytes per element — the moments plus, in mixed precision, the
        4-byte fp32 master (ZeRO's K = 12 for Adam)."""
        return self.moment_bytes_per_element() + (4 if self.precision is not None else 0)

    def moment_bytes_per_element(self) -> int:
        """The optimizer's own state per element (Adam's m and v: 8), from ``init_state``."""
        dtype = np.float32 if self.precision is not None else self.params[0].dtype
        st = self.optimizer.init_state((1,), dtype)
        return sum(a.nbytes for a in st.values() if isinstance(a, np.ndarray))

    def scalar_all_reduce_bytes(self) -> int:
        """Bytes one rank sends for a one-element ring all-reduce (a norm, an overflow flag):
        the element is padded to p, so 2·(p−1) float64 messages."""
        return 2 * (self.world_size - 1) * 8 if self.world_size > 1 else 0

    # the overflow flag travels over the strategy's own group (ZeRO: each rank checks its shard;
    # the parameter server: before its reduce); DDP and one rank check gradients every rank holds whole
    overflow_over_comm = False

    def scalar_groups(self) -> list:
        """The communicators of the step's one-element all-reduces, as :meth:`clip_` and the
        overflow check run them: the clipping norm's (:meth:`norm_groups`) and the overflow
        flag's (:meth:`flag_groups`). Groups of one rank send nothing and are left out."""
        return [g for g in self.norm_groups() + self.flag_groups() if g is not None and g.size > 1]

    def norm_groups(self) -> list:
        """Where :meth:`clip_` all-reduces the squared norm: over the model-parallel group
        (``norm_group``, see :meth:`count_in_norm`) and, for gradient shards (ZeRO), over the
        strategy's group; nothing where this rank does not clip (:meth:`clips_here`). Groups of
        one rank (None) included."""
        if self.clip > 0 and self.clips_here():
            return [self.norm_group] + ([self.comm] if self.stage > 0 else [])
        return []

    def flag_groups(self, precision=None) -> list:
        """Where the mixed-precision overflow check of ``precision`` (default: this strategy's)
        all-reduces its flag: over the whole grid under tensor/pipeline parallelism
        (:class:`~minidist.parallel.tensor.build.TensorParallelPrecision`: every rank of the
        grid skips alike), else over the strategy's group where its ranks see different
        gradients (``overflow_over_comm``). Groups of one rank (None) included."""
        precision = self.precision if precision is None else precision
        if precision is None:
            return []
        from ..tensor.build import TensorParallelPrecision      # (tensor imports nothing of data)
        if isinstance(precision, TensorParallelPrecision):
            return [precision.world]
        return [self.comm] if self.overflow_over_comm else []

    def clips_here(self) -> bool:
        """Whether this rank takes the clipping norm (the parameter server: only its root)."""
        return True

    def scalar_bytes(self) -> int:
        """Bytes of the step's one-element all-reduces (:meth:`scalar_groups`): a float64 ring
        all-reduce over n ranks sends 2·(n−1)·8 bytes (DeepSpeed and Megatron-LM all-reduce
        the norm and the overflow flag as one element too)."""
        return sum(2 * (g.size - 1) * 8 for g in self.scalar_groups())

    def expected_bytes_sent(self) -> int:
        """One data-parallel rank: only the one-element all-reduces over the grid (clipping
        norm, overflow flag) under tensor/pipeline parallelism."""
        return self.scalar_bytes()


def _bytes(p) -> int:
    return element_bytes(p)
