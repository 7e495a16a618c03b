"""ZeRO stage 3: optimizer states, gradients *and parameters* sharded.

Rajbhandari et al. 2020, §5.3 (P_os+g+p). Between uses a rank holds only its chunk of
every parameter (``S`` elements in all). The model is cut into **units** — the blocks of
``model.transformer.h`` and a "root" unit with everything else (the embeddings, whose
``wte`` is also the tied LM head, and ``ln_f``) — and each unit is one bucket of
:mod:`.buckets`:

* **forward**: a forward pre-hook on the unit all-gathers its parameters (``p.data``
  becomes a view of the gathered flat buffer), the unit runs, a forward hook frees them;
* **backward**: the forward hook also put an identity op on the unit's output, whose
  backward — run by autograd just before the unit's own backward ops — all-gathers the
  parameters **again**; when the unit's gradients are complete (post-accumulate-grad
  hooks) they are reduce-scattered into the gradient shard, as in stage 2, and the
  parameters are freed;
* **prefetch**: the pre-hook of a unit also issues the all-gathers of the units that come
  *next* (in forward order, or in backward order) on the comm stream, so they run while
  this unit computes. DeepSpeed's rule (``PartitionedParamCoordinator.fetch_sub_module``):
  walk the upcoming units, skip those already gathered or in flight, and fetch the others
  until the elements fetched by this hook reach
  ``min(stage3_prefetch_bucket_size, stage3_max_live_parameters − elements held)`` — the
  last unit may overshoot. So a budget of one block keeps one block ahead, a larger one
  runs further ahead (and holds more parameters at once), ``0`` disables prefetch: every
  gather is issued when its unit is needed and the compute stream waits for it.

The root unit is gathered for the whole forward (its ``wte`` is needed first and last)
and for the whole backward. Gathered parameters are charged to "parameters" while held,
so that category rises and falls unit by unit; at the optimizer step only the shards are
held. Traffic per micro-step: two all-gathers and one reduce-scatter of ``(p−1)·S``
elements — 3·(p−1)/p·Ψ, 1.5× DDP (§7). Memory at the step: ``(w + w + K)·S``.

**ZeRO-3 on a pipeline stage** (data parallelism over each stage's ``grid.dp``): the stage's
GPT holds its chunks' blocks and, on the ranks of the first and last chunk, the root unit; the
executor runs every action inside :meth:`ZeRO3.pipeline_action`. An F or a B gathers the root
first when its chunk runs the embedding or the head; the blocks gather themselves in their
hooks (prefetching only within the action) and each is released once its backward is over (an
identity op on its input; a block recomputed in B keeps them for that backward); everything is
released when the action ends. A zero-bubble ``W`` needs no weight values and gathers nothing.
Each micro-batch's forward and backward so gather ``G`` elements — every chunk's units, the root
once per chunk that runs it (twice on a V schedule's first rank). Gradients accumulate over the micro-batches in full, and are
reduce-scattered once, after the flush and the tied embedding's sum — the pipeline engine's rule
for every strategy: ``(p−1)·(2·m·G + S)`` elements per step.

**Under tensor parallelism** each tp rank's model is its slices, partitioned over ``grid.dp`` as
above: tp ranks never exchange parameters, and the tp collectives run inside gathered units.

**Frozen parameters** (fine-tuning, :mod:`minidist.peft`) are partitioned too: each unit keeps
a second bucket of them (``frozen_buckets``) whose shard travels in the same all-gather as
the trainable one (one message, ``[trainable chunk | frozen chunk]`` per rank), but has no
gradient, no reduce-scatter and no optimizer state: ``(p−1)·(3·S + 2·S_f)`` elements per
micro-step, ``S_f`` the frozen shard.
"""
from __future__ import annotations

import contextlib

import numpy as np

from ... import distributed as dist
from ...defaults import STAGE3_MAX_LIVE_PARAMETERS, STAGE3_PREFETCH_BUCKET_SIZE, ZERO3
from ...recompute import is_recomputing, rerun_blocks
from ...tensor import make_result
from .buckets import Bucket
from .zero2 import ZeRO2


def zero3_units(model) -> list[tuple[str, object, list]]:
    """(name, module, parameters) of every unit, in forward order: root, h.0, h.1, … (a pipeline
    stage's blocks under their index in the whole model: h.2, h.3 on the rank holding 2 and 3). Of a
    :class:`~minidist.parallel.expert.ParameterView` (``keep``): the view's parameters, units with none left out."""
    keep = getattr(model, "keep", None)
    model = model.model if keep is not None else model
    blocks = list(model.transformer.h) if hasattr(model, "transformer") and hasattr(model.transformer, "h") else []
    ids = getattr(model, "layer_ids", None) or range(len(blocks))
    in_blocks = {id(p) for blk in blocks for p in blk.parameters()}
    mine = (lambda ps: list(ps)) if keep is None else (lambda ps: [p for p in ps if keep(p)])   # noqa: E731
    root = mine(p for p in model.parameters() if id(p) not in in_blocks)
    units = [("root", model, root)] if root else []
    blocks = [(f"h.{i}", blk, mine(blk.parameters())) for i, blk in zip(ids, blocks)]
    return units + [u for u in blocks if u[2] or keep is None]


class ZeRO3(ZeRO2):
    name = ZERO3
    stage = 3

    def __init__(self, model, optimizer, comm, prefetch_bucket_size: int = STAGE3_PREFETCH_BUCKET_SIZE,
                 max_live_parameters: int = STAGE3_MAX_LIVE_PARAMETERS, **kwargs):
        self.prefetch_bucket_size = int(prefetch_bucket_size)
        self.max_live_parameters = int(max_live_parameters)
        self.prefetch = self.prefetch_bucket_size > 0
        super().__init__(model, optimizer, comm, **kwargs)
        self._gathered: dict[int, tuple] = {}         # unit -> (handle, flat) held now
        self._inflight: dict[int, tuple] = {}         # unit -> (work, handle, flat) prefetched
        self._grad_mem: dict[int, int] = {}           # id(param) -> handle of its full gradient
        self.chunk_units: dict | None = None          # on a pipeline stage: chunk -> the units it runs
        self.in_backward = False                      # on a pipeline stage: inside a B action
        self._partition()
        self.partitioned_at = len(self.device.memory.timeline)    # timeline rows before: the unsharded model
        self._install_hooks()

    def make_buckets(self, size):
        """One bucket per unit of its trainable parameters (what is reduce-scattered and updated);
        a unit's frozen parameters (fine-tuning, minidist.peft) form a second bucket,
        ``frozen_buckets[unit]``, partitioned and gathered with it, never reduced."""
        units = zero3_units(self.model)
        self.unit_names = [name for name, _, _ in units]
        buckets, self.unit_buckets, self.frozen_buckets = [], [], []
        for i, (_, _, params) in enumerate(units):
            trainable = [p for p in params if p.requires_grad]
            frozen = [p for p in params if not p.requires_grad]
            b = Bucket(len(buckets), trainable, self.world_size) if trainable else None
            if b is not None:
                b.unit = i
                buckets.append(b)
            self.unit_buckets.append(b)
            self.frozen_buckets.append(Bucket(i, frozen, self.world_size) if frozen else None)
        return buckets

    def unit_parts(self, i: int) -> list:
        """(bucket, my shard of it) of unit ``i``: trainable, then frozen."""
        b, f = self.unit_buckets[i], self.frozen_buckets[i]
        return ([(b, self.param_shards[b.index])] if b is not None else []) + \
            ([(f, self.frozen_shards[i])] if f is not None else [])

    # -- partitioning: keep my chunk, drop the rest ------------------------------------------
    def _partition(self) -> None:
        dev = self.device
        self.param_shards: dict[int, np.ndarray] = {}
        self.frozen_shards: dict[int, np.ndarray] = {}      # unit -> my chunk of its frozen parameters
        for i in range(len(self.unit_names)):
            for b, shards, what in ((self.unit_buckets[i], self.param_shards, "parameter"),
                                    (self.frozen_buckets[i], self.frozen_shards, "frozen")):
                if b is None:
                    continue
                lo, hi = self.my_range(b)
                shards[b.index] = b.flat_params()[lo:hi].copy()              # (c,)
                dev.memory.alloc(b.chunk * b.bytes_per_element, "parameters", f"{what} shard {self.unit_names[i]}")
                for p in b.params:
                    p.unplace()                   # the full copy is no longer charged...
                    p.data = _released(p.dtype)   # ...nor held

    def param_shard(self, b) -> np.ndarray:
        return self.param_shards[b.index]          # updated in place: the rank's only copy

    def hold_updated_shards(self) -> None:
        """No buffer: the shards are updated where they live (:meth:`param_shard`)."""

    def gather_parameters(self, params) -> None:
        """Nothing to do: the next forward gathers each unit when it needs it."""

    # -- gather / release ------------------------------------------------------------------
    def fetch(self, i: int) -> None:
        """Issue the all-gather of unit ``i`` on the comm stream (no wait)."""
        if i in self._gathered or i in self._inflight:
            return
        dev = self.device
        parts = self.unit_parts(i)
        w = parts[0][0].bytes_per_element
        handle = dev.memory.alloc(sum(b.padded for b, _ in parts) * w, "parameters", f"gathered {self.unit_names[i]}")
        mine = parts[0][1] if len(parts) == 1 else np.concatenate([shard for _, shard in parts])   # (c_t + c_f,)
        # why: unit i is about to run (forward or backward) and each rank holds only 1/p of it
        work = dist.all_gather(self.comm, mine, algorithm=self.algorithm, async_op=True, bytes_per_element=w)
        flats = self._unpack(parts, work.result)
        for (b, _), flat in zip(parts, flats):
            for p, v in zip(b.params, b.views(flat)):
                p.data = v
            dev.param_arrays.add(id(flat))        # a parameter, not an activation, when ops save it
        self._inflight[i] = (work, handle, flats)

    def _unpack(self, parts, gathered) -> list:
        """The gathered (p·Σc,) rank-major buffer as one flat (p·c,) per part."""
        if len(parts) == 1:
            return [gathered]
        full = gathered.reshape(self.world_size, -1)                         # (p, c_t + c_f)
        cols = np.cumsum([0] + [b.chunk for b, _ in parts])
        return [np.ascontiguousarray(full[:, lo:hi]).reshape(-1) for lo, hi in zip(cols[:-1], cols[1:])]

    def unit_numel(self, i: int) -> int:
        return sum(b.numel for b, _ in self.unit_parts(i))

    def prefetch_ahead(self, upcoming) -> None:
        """Issue the all-gathers of the ``upcoming`` units (in the order they will run) that
        fit the prefetch budget (see the module docstring)."""
        if not self.prefetch:
            return
        held = sum(self.unit_numel(j) for j in (*self._gathered, *self._inflight))
        budget = min(self.prefetch_bucket_size, self.max_live_parameters - held)
        fetched = 0
        for j in upcoming:
            if fetched >= budget:
                break
            if j in self._gathered or j in self._inflight:
                continue                          # already here or on its way: costs no budget
            self.fetch(j)
            fetched += self.unit_numel(j)

    def ensure(self, i: int) -> None:
        """Unit ``i`` must be usable now: gather it if needed and wait for the gather."""
        self.fetch(i)
        if i in self._inflight:
            work, handle, flats = self._inflight.pop(i)
            work.wait()                           # compute waits for the parameters to arrive
            self._gathered[i] = (handle, flats)

    def release(self, i: int) -> None:
        handle, flats = self._gathered.pop(i)
        self.device.memory.free(handle)
        for flat in flats:
            self.device.param_arrays.discard(id(flat))
        for b, _ in self.unit_parts(i):
            for p in b.params:
                p.data = _released(p.dtype)

    # -- hooks ---------------------------------------------------------------------------
    def _install_hooks(self) -> None:
        n, r = len(self.unit_names), int(self.unit_names[0] == "root")   # (a pipeline stage may hold no root)
        forward_order = list(range(n))                             # root, h.0, h.1, …
        backward_order = list(range(r)) + list(range(n - 1, r - 1, -1))   # root, h.L-1, …, h.0
        self.next_in_forward, self.next_in_backward = {}, {}      # unit -> the units that run after it
        for i, (_, module, _) in enumerate(zero3_units(self.model)):
            self.next_in_forward[i] = forward_order[forward_order.index(i) + 1:]
            self.next_in_backward[i] = backward_order[backward_order.index(i) + 1:]
            module.register_forward_pre_hook(self._pre_forward(i))
            module.register_forward_hook(self._post_forward(i))

    def _pre_forward(self, i):
        root = self.unit_names[i] == "root"

        def hook(module, args):
            self.ensure(i)
            # recomputed in backward (a pipeline's B, or checkpointing): its backward comes next, not a forward
            if not self.in_backward and not is_recomputing(self.device):
                self.prefetch_ahead(self.next_in_forward[i])        # overlaps unit i's forward
            if not root and (self.frozen_buckets[i] is not None or self.chunk_units is not None) and args:
                return (self._release_after_backward(args[0], i),) + tuple(args[1:])
        return hook

    def _release_after_backward(self, x, i):
        """An identity op on unit ``i``'s input, whose backward runs once the unit's backward is
        over and releases it. A unit with frozen parameters needs it: they signal nothing when
        backward is done with them (no gradient), so the last gradient of its trainable
        parameters may come before the frozen ones are used for the last time."""
        if not getattr(x, "requires_grad", False):
            return x                              # no backward through the input: released at the end

        def backward(g, needs):
            if i in self._gathered:
                self.release(i)
            return [g]
        return make_result(x.data, (x,), backward, f"zero3.post_backward[{self.unit_names[i]}]")

    def _post_forward(self, i):
        root = self.unit_names[i] == "root"

        def hook(module, args, out):
            if root and isinstance(out, tuple):                   # the model: (logits, loss[, hidden])
                # backward starts from the loss, or from the logits when the loss is taken outside the
                # model (distillation's KD loss): that output gathers the root (ln_f, the tied head) again
                start = 1 if out[1] is not None else 0
                out = tuple(self._before_backward(t, i) if k == start else t for k, t in enumerate(out))
            elif not root:
                out = self._before_backward(out, i)
            if not self.in_backward:              # recomputed in B: kept for its backward, which follows
                self.release(i)
            return out
        return hook

    def _before_backward(self, t, i):
        """An identity op whose backward gathers unit ``i`` (and prefetches the next ones)."""
        if t is None or not getattr(t, "requires_grad", False):
            return t

        def backward(g, needs):
            self.ensure(i)
            self.prefetch_ahead(self.next_in_backward[i])           # overlaps unit i's backward
            return [g]
        return make_result(t.data, (t,), backward, f"zero3.pre_backward[{self.unit_names[i]}]")

    # -- gradients: account the full gradient until its bucket is reduce-scattered ------------
    def _on_grad_ready(self, p) -> None:
        if id(p) not in self._grad_mem:           # the parameter is not "placed": charge its gradient here
            self._grad_mem[id(p)] = self.device.memory.alloc(p.grad.size * self._bucket_of[id(p)].bytes_per_element,
                                                             "gradients", self.names[id(p)])
        b = self._bucket_of[id(p)]
        super()._on_grad_ready(p)                 # counts; reduce-scatters a complete bucket
        if b.ready == 0 and b.unit in self._gathered and self.frozen_buckets[b.unit] is None \
                and self.chunk_units is None:     # (a pipeline stage releases each unit after its backward)
            self.release(b.unit)                  # 0 again: backward of this unit is over

    def after_reduce(self, b) -> None:
        for p in b.params:
            self.device.memory.free(self._grad_mem.pop(id(p), None))
            p.grad = None

    def after_backward(self) -> None:
        super().after_backward()
        for i in list(self._gathered):            # a unit whose gradients never completed
            self.release(i)

    # -- on a pipeline stage (minidist.parallel.pipeline) --------------------------------------
    def attach_pipeline(self, chunks: dict) -> None:
        """Run on this rank's pipeline ``chunks`` (stage → chunk): see "ZeRO-3 on a pipeline stage"
        in the module docstring; the executor calls :meth:`pipeline_action` around every action."""
        unit_of = {name: i for i, name in enumerate(self.unit_names)}
        root = [unit_of["root"]] if "root" in unit_of else []
        self.chunk_units = {}
        for stage, c in chunks.items():
            blocks = [unit_of[f"h.{i}"] for i in c.layer_ids if f"h.{i}" in unit_of]   # (a view: its blocks)
            self.chunk_units[stage] = (root if c.first or c.last else []) + blocks
            for k, u in enumerate(blocks):        # prefetch only what the same action runs next
                self.next_in_forward[u], self.next_in_backward[u] = blocks[k + 1:], blocks[:k][::-1]

    @contextlib.contextmanager
    def pipeline_action(self, action):
        """Around one action of the schedule on this rank: F and B gather the root unit first (if
        the chunk holds the embedding or the head; the blocks gather themselves, in their hooks),
        W gathers nothing; every unit is released when the action ends."""
        units = self.chunk_units[action.stage]
        if action.op == "W":
            with self._shapes_only(units):
                yield
            return
        blocks = [u for u in units if self.unit_names[u] != "root"]
        if len(blocks) < len(units):
            self.ensure(units[0])                 # the embedding or the head runs in this action
        self.prefetch_ahead(blocks if action.op == "F" else blocks[::-1])
        self.in_backward = action.op == "B"
        try:
            yield
        finally:
            self.in_backward = False
            for i in list(self._inflight):        # (none: prefetch stays inside the action)
                self.ensure(i)
            for i in list(self._gathered):
                self.release(i)

    @contextlib.contextmanager
    def _shapes_only(self, units):
        """W needs no weight values (dW = xᵀ·dy, dγ = Σ dy·x̂; Qi et al. 2023, §2), only their shapes:
        each parameter gets a zero-byte stand-in (no all-gather, nothing charged); a value read
        would be 0, and the equivalence tests with one rank would fail."""
        for u in units:
            for b, _ in self.unit_parts(u):
                for p, shape in zip(b.params, b.shapes):
                    p.data = np.broadcast_to(np.zeros((), dtype=b.dtype), shape)
        try:
            yield
        finally:
            for u in units:
                for b, _ in self.unit_parts(u):
                    for p in b.params:
                        p.data = _released(p.dtype)

    def gathered_per_micro_batch(self) -> int:
        """G: Σ of the per-rank chunks c of the units that one forward (or one backward) of every
        chunk of this rank gathers — the root once per chunk that runs it; a ring all-gather of a
        unit sends (p−1)·c elements."""
        return sum(b.chunk for units in self.chunk_units.values() for u in units for b, _ in self.unit_parts(u))

    # -- whole parameters, for checks ---------------------------------------------------------
    def full_parameters(self) -> dict:
        """Collective: gather every unit and return name → copy of every parameter."""
        out = {}
        for i in range(len(self.unit_names)):
            for b, shard in self.unit_parts(i):
                # why: nobody holds whole parameters between steps; a checkpoint must gather them
                flat = dist.all_gather(self.comm, shard, algorithm=self.algorithm,
                                       bytes_per_element=b.bytes_per_element)
                for p, v in zip(b.params, b.views(flat)):
                    out[self.names[id(p)]] = v.copy()
        return out

    def frozen_shard(self) -> int:
        """S_f: the elements of frozen parameters this rank keeps (0 unless fine-tuning)."""
        return sum(f.chunk for f in self.frozen_buckets if f is not None)

    def expected_parameter_bytes(self) -> int:
        """Only my shard of the parameters between steps: w·S (and w·S_f of the frozen ones)."""
        return self.buckets[0].bytes_per_element * (self.shard + self.frozen_shard())

    def expected_bytes_sent(self, micro_batches: int = 1) -> int:
        """Per micro-step: all-gather in forward, again in backward (and R for the blocks full recomputation re-runs),
        one reduce-scatter; frozen shards gathered, never reduced: (p−1)·(3·S + 2·S_f + R) elements. On a pipeline
        stage: every micro-batch's forward and backward gather G, one reduce-scatter after the flush: (p−1)·(2·m·G + S)."""
        p, w = self.world_size, self.buckets[0].bytes_per_element
        if p == 1:
            return self.scalar_bytes()
        if self.chunk_units is not None:
            return (p - 1) * (2 * micro_batches * self.gathered_per_micro_batch() + self.shard) * w + self.scalar_bytes()
        return micro_batches * (p - 1) * (3 * self.shard + 2 * self.frozen_shard() + self.recomputed()) * w + self.scalar_bytes()

    def recomputed(self) -> int:
        """R: Σ of the per-rank chunks of the blocks full recomputation re-runs (:func:`rerun_blocks`)."""
        again = {f"h.{i}" for i in rerun_blocks(getattr(self.model, "model", self.model))}   # (a view's model)
        return sum(b.chunk for u, name in enumerate(self.unit_names) if name in again for b, _ in self.unit_parts(u))


def _released(dtype) -> np.ndarray:      # what a parameter's data is while not gathered: nothing
    return np.empty(0, dtype=dtype)
