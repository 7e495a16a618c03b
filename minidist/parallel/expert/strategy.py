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

:class:`ExpertDataParallel` runs the configured strategy twice — DDP, ZeRO-1 or ZeRO-2 over
each group, each with its own optimizer over its own parameters (DeepSpeed-MoE's ZeRO shards
expert states over the expert-data-parallel group the same way) — and answers the Trainer's
protocol for both.
"""
from __future__ import annotations

import copy


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
    ``experts``: the same kind of strategy over the expert-data-parallel group."""

    def __init__(self, dense, experts):
        self.dense, self.experts = dense, experts
        self.model = dense.model.model               # the whole model (each part holds a view of it)
        self.name, self.stage = dense.name, dense.stage
        self.optimizer = dense.optimizer
        self.precision = dense.precision
        self.model_states: dict | None = None

    @property
    def parts(self):
        return (self.dense, self.experts)

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
        for s in self.parts:
            s.step()
        # the snapshot of the device at the first step, when the experts' gradients and (after the
        # first step) their optimizer states are held beside everything else: the whole rank's states
        self.model_states = self.dense.model_states

    def count_in_norm(self, group, duplicates) -> None:
        for s in self.parts:
            s.count_in_norm(group, duplicates)

    def full_parameters(self) -> dict:
        """This rank's parameters, whole over their data-parallel groups (a collective)."""
        return {**self.dense.full_parameters(), **self.experts.full_parameters()}

    # -- the formulas -----------------------------------------------------------------------------
    def expected_model_states(self) -> dict:
        parts = [s.expected_model_states() for s in self.parts]
        return {k: sum(p[k] for p in parts) for k in parts[0]}

    def expected_bytes_sent(self, micro_batches: int = 1) -> int:
        """Both strategies' gradient traffic (the all-to-alls are the model's: :func:`.dispatch.all_to_all_bytes`)."""
        return sum(s.expected_bytes_sent(micro_batches) if hasattr(s, "shard") else s.expected_bytes_sent()
                   for s in self.parts)

    def __getattr__(self, name):
        # what a report reads of one strategy (numel, frozen_bytes, …): the non-expert one's
        dense = self.__dict__.get("dense")
        if dense is None:
            raise AttributeError(name)
        return getattr(dense, name)


def build_expert_strategy(build_strategy, cfg: dict, model, build_optimizer, dense_comm, expert_comm,
                          precision=None):
    """The two strategies of a model with experts: ``build_strategy(cfg, view, optimizer, comm,
    precision)`` once over each group (``None``: a group of one rank). The experts' strategy
    keeps its own copy of the precision's loss-scale history."""
    dense_view = ParameterView(model, lambda p: not is_expert(p))
    expert_view = ParameterView(model, is_expert)
    dense = build_strategy(cfg, dense_view, build_optimizer(dense_view.parameters()), dense_comm, precision)
    experts = build_strategy(cfg, expert_view, build_optimizer(expert_view.parameters()), expert_comm,
                             copy.copy(precision) if precision is not None else None)
    return ExpertDataParallel(dense, experts)
