"""The two simplest schedules: no pipelining at all, and GPipe's fill-then-drain.

* ``naive`` — model parallelism without pipelining: one micro-batch goes all the way
  forward and back before the next starts, so only one rank works at any moment.
  Bubble (p−1)/p of the step; one micro-batch in flight.
* ``gpipe`` — Huang et al. 2019, "GPipe: Efficient Training of Giant Neural Networks using
  Pipeline Parallelism": every rank runs all m forwards, then all m backwards (torch's
  ``ScheduleGPipe``, DeepSpeed's "all forward, all backward"). The pipeline fills and drains
  once per step: bubble (p−1)(T_F+T_B) per rank, a fraction (p−1)/(m+p−1) of the step;
  every rank holds the activations of all m micro-batches at once (peak in flight m).
"""
from __future__ import annotations

from ...defaults import GPIPE, NAIVE
from .schedule import Action, Schedule, check_sizes, one_chunk_per_rank


def naive(ranks: int, micro_batches: int) -> Schedule:
    check_sizes(NAIVE, ranks, micro_batches)
    acts = [[a for i in range(micro_batches) for a in (Action("F", i, r), Action("B", i, r))]
            for r in range(ranks)]
    return Schedule(NAIVE, ranks, micro_batches, one_chunk_per_rank(ranks), acts)


def gpipe(ranks: int, micro_batches: int) -> Schedule:
    check_sizes(GPIPE, ranks, micro_batches)
    acts = [[Action("F", i, r) for i in range(micro_batches)] + [Action("B", i, r) for i in range(micro_batches)]
            for r in range(ranks)]
    return Schedule(GPIPE, ranks, micro_batches, one_chunk_per_rank(ranks), acts)
