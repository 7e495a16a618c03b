"""The two all-to-alls of expert parallelism: each group's slots to their expert's rank, and back.

Every ep rank routes its own group (GShard's groups: the tokens it holds) into a slot buffer
(E, C, h) (:class:`minidist.moe.MoEMLP`). Rank r holds experts r·E/ep … (r+1)·E/ep − 1,
whole (Lepikhin et al. 2020 "GShard", §2.3; DeepSpeed-MoE, Rajbhandari et al. 2022)::

    dispatch:  (E, C, h) = ep blocks (E/ep, C, h), block j → rank j      ──all-to-all──►
               (ep, E/ep, C, h), row j from rank j  →  (E/ep, ep·C, h)   my experts, every group's slots
    experts:   each of my E/ep experts runs on its ep·C slots
    combine:   (E/ep, ep·C, h)  →  block j (E/ep, C, h) back to rank j      ──all-to-all──►
               (ep, E/ep, C, h) = (E, C, h)                               every expert's output, my slots

Each all-to-all sends (ep − 1)/ep · E · C · h elements per rank (the block a rank keeps does
not travel); backward makes the same two in the other direction (the gradient of an all-to-all
is the inverse all-to-all): four per MoE layer and micro-batch (:func:`all_to_all_bytes`).

**The experts' gradient scale.** An expert's gradient on its rank sums the contributions of
the ep groups it served; the data-parallel average over all dp ranks then needs 1/dp, but the
experts' reduction runs over the expert-data-parallel ranks only (dp/ep of them) and divides by
dp/ep. So the combine's backward scales the gradient entering the experts by 1/ep and the
dispatch's backward scales it back by ep: the experts' parameters get the extra 1/ep, nothing
else changes (Megatron-LM scales expert gradients the same way, by 1/dp before a sum over the
expert-data-parallel group). With ep a power of two the scaling is exact.
"""
from __future__ import annotations

import numpy as np

from ... import distributed as dist
from ...autocast import autocast, autocast_dtype
from ...tensor import Tensor, as_tensor, make_result


def all_to_all_bytes(ep: int, num_experts: int, capacity: int, hidden: int, itemsize: int) -> int:
    """Bytes one rank sends in one dispatch or combine all-to-all: (ep − 1)/ep · E · C · h · itemsize."""
    return (ep - 1) * (num_experts // ep) * capacity * hidden * itemsize


# -- the two layouts on arrays ---------------------------------------------------------------------
def slots_to_experts(group, buf: np.ndarray, wire=None) -> np.ndarray:
    """(E, C, h) my group's slots of every expert → (E/ep, ep·C, h): every group's slots of my experts."""
    ep = group.size
    E, C, h = buf.shape
    blocks = buf.reshape(ep, E // ep, C, h)                      # block j: the slots of rank j's experts
    got = dist.all_to_all(group, np.ascontiguousarray(blocks), wire_dtype=wire)    # row j: rank j's group
    return np.ascontiguousarray(got.transpose(1, 0, 2, 3)).reshape(E // ep, ep * C, h)


def experts_to_slots(group, y: np.ndarray, wire=None) -> np.ndarray:
    """(E/ep, ep·C, h) my experts' outputs → (E, C, h): every expert's output for my group's slots."""
    ep = group.size
    El, S, h = y.shape
    blocks = y.reshape(El, ep, S // ep, h).transpose(1, 0, 2, 3)       # block j: rank j's slots
    got = dist.all_to_all(group, np.ascontiguousarray(blocks), wire_dtype=wire)    # row j: rank j's experts
    return got.reshape(El * ep, S // ep, h)


# -- as autograd ops ------------------------------------------------------------------------------
class ExpertParallel:
    """The dispatcher an MoE layer asks for on an ep rank (``layers.expert_parallel``):
    ``group`` = ``grid.ep``; this rank holds experts ``rank·E/ep`` … ``(rank+1)·E/ep − 1``."""

    def __init__(self, group):
        self.group = group
        self.size, self.rank = group.size, group.rank

    def dispatch(self, buf) -> Tensor:
        """(E, C, h) → (E/ep, ep·C, h); backward: the inverse all-to-all, times ep (see the module)."""
        buf = as_tensor(buf)
        wire, group, ep = autocast_dtype(), self.group, self.size
        # why: each expert lives on one rank; the slots my group gave it must travel there
        out = slots_to_experts(group, buf.data, wire)

        def backward(g, needs):
            # why: the gradient of the slots returns to the rank whose tokens filled them
            return (experts_to_slots(group, g, wire) * np.asarray(ep, g.dtype),)
        with autocast(None):                     # a permutation changes no value
            return make_result(out, (buf,), backward, "moe_dispatch")

    def combine(self, y) -> Tensor:
        """(E/ep, ep·C, h) → (E, C, h); backward: the dispatch all-to-all, times 1/ep."""
        y = as_tensor(y)
        wire, group, ep = autocast_dtype(), self.group, self.size
        # why: each group's outputs return to the rank that holds its tokens, to be combined there
        out = experts_to_slots(group, y.data, wire)

        def backward(g, needs):
            # why: the experts' output gradients go back to the experts' rank; 1/ep: see the module
            return (slots_to_experts(group, g, wire) * np.asarray(1.0 / ep, g.dtype),)
        with autocast(None):
            return make_result(out, (y,), backward, "moe_combine")
