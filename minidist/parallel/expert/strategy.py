"""Data parallelism with experts: two groups, one for the experts and one for everything else.

Under expert parallelism the ep ranks are drawn from the data-parallel ranks (Megatron-LM's
expert parallel groups; DeepSpeed-MoE, Rajbhandari et al. 2022, §4): the dp ranks read
different micro-batches, and each ep rank holds only E/ep experts. So

* a **non-expert** parameter (attention, LayerNorms, embeddings, the router) is on every
  data-parallel rank: its gradient is averaged over all of them (``grid.dp_ep``: dp × ep ranks);
* an **expert** parameter is on the dp/ep ranks that share its ep coordinate (the
  expert-data-parallel group, ``grid.dp``): its gradient is averaged over those only (the
  dispatcher has already summed its ep groups' contributions and divided by ep,
  :mod:`.dispatch`).

:class:`ExpertDataParallel` runs the configured strategy twice — DDP, ZeRO-1, ZeRO-2 or ZeRO-3
over each group, each with its own optimizer over its own parameters (DeepSpeed-MoE's ZeRO shards
expert states over the expert-data-parallel group the same way) — and answers the Trainer's
protocol for both. Under **ZeRO-3** each strategy partitions its own parameters over its group
and gathers them per unit (:func:`~minidist.parallel.data.zero3.zero3_units` of a
:class:`ParameterView`): a MoE block is a unit of both — its attention, LayerNorms and router
gathered over grid.dp_ep, its E/ep experts over grid.dp, by two hooks on the same module; on a
pipeline stage both gather and release around every action.

**Clipping** is over every parameter, as on one rank (torch's ``clip_grad_norm_``): before
either strategy steps, the experts' squared gradient norm is taken from their reduced
gradients (which the in-flight reductions already hold), summed over ``grid.dp`` when they are
shards, over ``grid.ep`` (each ep rank holds other experts) and last over ``grid.mp`` (the
other tp slices and pipeline stages); the non-expert strategy adds it to its own, and both clip
by the one norm. **Mixed precision** takes one verdict the same way: the experts' overflow flag
(their reduced gradients, rounded to the format) is agreed over the world before the steps;
the non-expert strategy's check adds it, its step moves the one loss scaler, and the experts'
step follows that verdict (DeepSpeed-MoE's optimizer checks every parameter group at once).

**A pipeline stage that holds no expert** (``every_n_layers`` > 1) has no experts' part
(``experts`` is None), but it is an :class:`ExpertDataParallel` all the same: the verdict's
all-reduce spans the world and the norm's spans ``grid.mp``, which reach the other stages, so
every rank must make them, in the same order, or one stage's norm would be summed with another
stage's experts' and the next collective would wait forever. It adds nothing to either (a
false flag, zero squares) and takes both results, so that it skips and clips with the stages
that hold experts. That is why the experts' norm crosses ``grid.mp`` last: the sums inside a
stage (``grid.dp``, ``grid.ep``) are made by the stages that hold experts only.
"""
from __future__ import annotations

import contextlib
import math

import numpy as np

from ... import distributed as dist
from ...precision import Precision
from ...precision.loss_scaler import has_overflow
from ...precision.mixed import clip_by_norm_
from ..data.ddp import DDP
from ..data.zero1 import ZeRO1


class ParameterView:
    """The parameters of ``model`` that ``keep(p)`` selects, as a strategy reads a model."""

    def __init__(self, model, keep):
        self.model, self.keep = model, keep

    def named_parameters(self, prefix: str = ""):
        return ((n, p) for n, p in self.model.named_parameters(prefix) if self.keep(p))

    def parameters(self):
        return [p for _, p in self.named_parameters()]


def is_expert(p) -> bool:
    return bool(getattr(p, "expert", False))


class ExpertDataParallel:
    """``dense``: the strategy of the non-expert parameters over the whole data-parallel group;
    ``experts``: the same kind of strategy over the expert-data-parallel group, or None on a
    pipeline stage that holds no expert (it still makes the joint collectives: see the module)."""

    def __init__(self, dense, experts, ep_group=None, world=None):
        self.dense, self.experts, self.ep_group, self.world = dense, experts, ep_group, world
        self.model = dense.model.model               # the whole model (each part holds a view of it)
        self.name, self.stage = dense.name, dense.stage
        self.optimizer = dense.optimizer
        self.precision = dense.precision
        self.model_states: dict | None = None
        self._expert_squares, self._norm = 0.0, None
        if dense.clip > 0:                           # one norm over both groups (see the module)
            dense.clip_ = self._clip_dense
            if experts is not None:
                experts.clip_ = self._clip_experts
        self._expert_overflow = self._verdict = False
        if dense.precision is not None:              # one overflow verdict, one loss scaler (see the module)
            for part, role in zip(self.parts, ("dense", "experts")):
                part.precision = JointVerdict(part.precision, self, role)
                if part.mp is not None:
                    part.mp.precision = part.precision

    @property
    def parts(self):
        """The strategies this rank runs: the non-expert one, then the experts' (if it holds any)."""
        return (self.dense,) if self.experts is None else (self.dense, self.experts)

    # -- the protocol ---------------------------------------------------------------------------
    def begin_micro(self, micro: int, n_micro: int) -> None:
        for s in self.parts:
            s.begin_micro(micro, n_micro)

    def scale_loss(self, loss):
        return self.dense.scale_loss(loss)

    def after_backward(self) -> None:
        for s in self.parts:
            s.after_backward()

    def step(self) -> None:
        if self.dense.precision is not None:
            self._expert_overflow = self.expert_overflow()
        if self.dense.clip > 0:
            self._expert_squares = self.expert_squares()
        for s in self.parts:
            s.step()
        self.model_states = self._snapshot()

    def _snapshot(self) -> dict | None:
        """The whole rank's model states at the step. The dense part's snapshot holds every
        gradient (the experts' are released only at their own step, which comes second), but
        at the first step the experts' optimizer states are created after it, by that second
        step: those are read from the experts' snapshot, taken when they exist."""
        d = self.dense.model_states
        e = self.experts.model_states if self.experts is not None else None
        if d is None or e is None:
            return d
        states = dict(d, optimizer_states=max(d["optimizer_states"], e["optimizer_states"]))
        states["total"] = sum(states[c] for c in ("parameters", "gradients", "optimizer_states"))
        states["host"] = max(d.get("host", 0), e.get("host", 0))
        return states

    # -- one verdict and one norm over both groups -------------------------------------------------
    def reduced_expert_grads(self) -> tuple:
        """(arrays, their parameters or None, sharded?): the experts' gradients as their step will
        find them — reduced, and in mixed precision rounded to the format (in place: the step's own
        rounding then changes nothing)."""
        e = self.experts
        if e is None:                                # a pipeline stage without experts
            return [], [], False
        if isinstance(e, ZeRO1):                     # ZeRO-1/2: my reduced chunks, summed over grid.dp
            grads, params, sharded = [e.grad_shards[b.index] for b in e.buckets], None, True
        elif isinstance(e, DDP):                     # the buckets' averages, before DDP copies them back
            grads, params, sharded = [], [], False
            for b, _, work in e._launched.values():
                grads += b.views(work.result)
                params += b.params
        else:                                        # alone in its group (or the parameter server: local ones)
            grads, params, sharded = [p.grad for p in e.params], e.params, False
        if e.precision is not None:
            e.precision.round_(grads)
        return grads, params, sharded

    def expert_overflow(self) -> bool:
        """Whether any rank's experts have an inf/NaN gradient (a collective over the world)."""
        flag = np.array([float(has_overflow(self.reduced_expert_grads()[0]))])
        if self.world is not None and self.world.size > 1:
            # why: every rank must skip the same steps, whichever experts overflowed
            flag = dist.all_reduce(self.world, flag, op="max", algorithm="ring")
        return bool(flag[0] > 0)

    def expert_squares(self) -> float:
        """Σ g² of every expert's reduced (unscaled) gradient, over the whole model (collectives over
        grid.dp when sharded and grid.ep inside the stage, then over grid.mp: see the module)."""
        e = self.experts
        sq = np.zeros(1)                             # a stage without experts adds nothing
        if e is not None:
            grads, params, sharded = self.reduced_expert_grads()
            if e.precision is not None:              # what the step will clip: unscaled in fp32, as unscale_ does
                inv = np.float32(1.0 / e.precision.loss_scale)
                grads = [None if g is None else g.astype(np.float32) * inv for g in grads]
            sq[0] = e.local_squared_norm(grads, params)
            if sharded and e.world_size > 1:
                # why: each rank of grid.dp holds a shard of these experts' gradients
                sq = dist.all_reduce(e.comm, sq, op="sum", algorithm="ring")
            if self.ep_group is not None and self.ep_group.size > 1:
                # why: each ep rank holds other experts; the norm is over all of them
                sq = dist.all_reduce(self.ep_group, sq, op="sum", algorithm="ring")
        if self.dense.norm_group is not None:
            # why: the other tp slices and pipeline stages hold the rest (a stage may hold none:
            # it still takes part, or the stages' collectives over grid.mp would not pair up)
            sq = dist.all_reduce(self.dense.norm_group, sq, op="sum", algorithm="ring")
        return float(sq[0])

    def _clip_dense(self, grads, sharded: bool, params=None) -> None:
        self._norm = math.sqrt(_squares(self.dense, grads, sharded, params) + self._expert_squares)
        clip_by_norm_(grads, self._norm, self.dense.clip)

    def _clip_experts(self, grads, sharded: bool, params=None) -> None:
        clip_by_norm_(grads, self._norm, self.experts.clip)       # the norm the dense step took

    def count_in_norm(self, group, duplicates) -> None:
        for s in self.parts:
            s.count_in_norm(group, duplicates)

    def full_parameters(self) -> dict:
        """This rank's parameters, whole over their data-parallel groups (a collective)."""
        return {name: value for s in self.parts for name, value in s.full_parameters().items()}

    # -- the formulas -----------------------------------------------------------------------------
    def expected_model_states(self) -> dict:
        parts = [s.expected_model_states() for s in self.parts]
        return {k: sum(p[k] for p in parts) for k in parts[0]}

    def scalar_groups(self) -> list:
        """The communicators of the step's one-element all-reduces, as this rank runs them:
        the experts' overflow flag over the world (:meth:`expert_overflow`) and the non-expert
        part's own check (its precision's, inside :class:`JointVerdict`: over the world under
        tensor/pipeline parallelism, over its group for ZeRO and the parameter server); the
        experts' squared norm over grid.dp (shards), grid.ep (on a stage that holds experts) and
        grid.mp (:meth:`expert_squares`, on every rank) and the non-expert part's norm
        (:meth:`_clip_dense`: over grid.mp, and grid.dp_ep for shards, where that part clips).
        The experts' part sends none of its own: it takes the verdict and the norm the others
        agreed (:meth:`_clip_experts`, :class:`JointVerdict`)."""
        d, e, out = self.dense, self.experts, []
        if d.precision is not None:
            out += [self.world] + d.flag_groups(getattr(d.precision, "inner", d.precision))
        if d.clip > 0:
            if e is not None:
                out += ([e.comm] if isinstance(e, ZeRO1) else []) + [self.ep_group]
            out += [d.norm_group] + d.norm_groups()
        return [g for g in out if g is not None and g.size > 1]

    def scalar_bytes(self) -> int:
        """Bytes of the step's one-element all-reduces (:meth:`scalar_groups`): 2·(n−1)·8 each."""
        return sum(2 * (g.size - 1) * 8 for g in self.scalar_groups())

    def expected_bytes_sent(self, micro_batches: int = 1) -> int:
        """Both strategies' gradient traffic, with the one-float64 ring all-reduces this rank
        really makes (:meth:`scalar_groups`: the joint verdict and norm, in place of the parts'
        own). The all-to-alls are the model's (:func:`.dispatch.all_to_all_bytes`)."""
        parts = sum((s.expected_bytes_sent(micro_batches) if hasattr(s, "shard") else s.expected_bytes_sent())
                    - s.scalar_bytes() for s in self.parts)
        return parts + self.scalar_bytes()

    # -- ZeRO-3 on a pipeline stage: both parts gather and release their units around every action --
    # (a part alone in its group — the experts when ep equals the data-parallel degree — is a
    # LocalStrategy: it holds its parameters whole and has nothing to gather)
    def _attach_both(self, chunks: dict) -> None:
        for s in self.parts:
            if hasattr(s, "attach_pipeline"):
                s.attach_pipeline(chunks)

    @contextlib.contextmanager
    def _action_of_both(self, action):
        with contextlib.ExitStack() as stack:        # the dense part's units first, released last
            for s in self.parts:
                if hasattr(s, "pipeline_action"):
                    stack.enter_context(s.pipeline_action(action))
            yield

    def __getattr__(self, name):
        # what a report reads of one strategy (numel, frozen_bytes, …): the non-expert one's
        dense = self.__dict__.get("dense")
        if dense is None:
            raise AttributeError(name)
        both = {"attach_pipeline": "_attach_both", "pipeline_action": "_action_of_both"}
        if name in both and hasattr(dense, name):      # ZeRO-3: present exactly when the parts have it
            return getattr(self, both[name])
        return getattr(dense, name)


def build_expert_strategy(build_strategy, cfg: dict, model, build_optimizer, dense_comm, expert_comm,
                          precision=None, world=None):
    """The two strategies of a model with experts: ``build_strategy(cfg, view, optimizer, comm,
    precision)`` once over each group (``None``: a group of one rank); ``world``: every rank (the
    overflow verdict is agreed over it). A model (pipeline stage) without experts gets the first
    only, and the joint collectives all the same."""
    dense_view = ParameterView(model, lambda p: not is_expert(p))
    expert_view = ParameterView(model, is_expert)
    dense = build_strategy(cfg, dense_view, build_optimizer(dense_view.parameters()), dense_comm, precision)
    experts = None
    if expert_view.parameters():
        experts = build_strategy(cfg, expert_view, build_optimizer(expert_view.parameters()), expert_comm, precision)
    ep = getattr(model.layers, "expert_parallel", None)
    return ExpertDataParallel(dense, experts, ep.group if ep is not None else None, world)


class JointVerdict(Precision):
    """A part's :class:`~minidist.precision.Precision` (same format, scaler and history) whose
    overflow verdict covers both parts: the non-expert part adds the experts' flag to its own
    check and moves the scaler; the experts' part follows that verdict and leaves the scaler alone."""

    def __init__(self, precision: Precision, owner: ExpertDataParallel, role: str):
        self.__dict__.update(precision.__dict__)
        self.inner, self.owner, self.role = precision, owner, role

    def found_overflow(self, arrays, comm=None) -> bool:
        if self.role == "experts":
            return self.owner._verdict               # decided by the non-expert step, a moment ago
        self.owner._verdict = self.inner.found_overflow(arrays, comm) or self.owner._expert_overflow
        return self.owner._verdict

    def end_step(self, overflow: bool):
        if self.role == "dense":                     # one step of the scaler (and of the history) per step
            return self.inner.end_step(overflow)
        return None


def _squares(part, grads, sharded: bool, params) -> float:
    """Σ g² of one strategy's part of the model, as :meth:`LocalStrategy.clip_` sums it: this rank's
    gradients, over the model-parallel group, over the data-parallel group when they are shards."""
    sq = np.array([part.local_squared_norm(grads, params)])
    if part.norm_group is not None:
        # why: the other tp shards / pipeline stages of these parameters are on grid.mp
        sq = dist.all_reduce(part.norm_group, sq, op="sum", algorithm="ring")
    if sharded and part.world_size > 1:
        # why: each rank holds a shard of the gradients
        sq = dist.all_reduce(part.comm, sq, op="sum", algorithm="ring")
    return float(sq[0])
