"""1F1B (PipeDream-Flush): Narayanan et al. 2021, "Memory-Efficient Pipeline-Parallel DNN
Training" (PipeDream-2BW/Flush), the default schedule of Megatron-LM and DeepSpeed, torch's
``Schedule1F1B``.

Rank r (of p) runs three phases:

1. **warm-up**: ``min(p−r−1, m)`` forwards — just enough that the first backward reaches
   rank r exactly when its warm-up ends;
2. **steady state**: one forward, one backward, repeated;
3. **cool-down**: the remaining backwards.

Same bubble as GPipe, (p−1)(T_F+T_B) per rank = a fraction (p−1)/(m+p−1), but rank r never
holds more than ``min(p−r, m)`` micro-batches' activations (GPipe: m).
"""
from __future__ import annotations

from ...defaults import ONE_F_ONE_B
from .schedule import Action, Schedule, check_sizes, one_chunk_per_rank


def one_f_one_b(ranks: int, micro_batches: int) -> Schedule:
    check_sizes(ONE_F_ONE_B, ranks, micro_batches)
    m = micro_batches
    acts = []
    for r in range(ranks):
        warmup = min(ranks - r - 1, m)
        prog = [Action("F", i, r) for i in range(warmup)]
        for i in range(m - warmup):                          # steady: F of a new one, B of the oldest
            prog += [Action("F", warmup + i, r), Action("B", i, r)]
        prog += [Action("B", i, r) for i in range(m - warmup, m)]
        acts.append(prog)
    return Schedule(ONE_F_ONE_B, ranks, m, one_chunk_per_rank(ranks), acts)
