"""Zero-bubble schedules ZB-H1 and ZB-H2: Qi et al. 2023, "Zero Bubble Pipeline Parallelism"
(ICLR 2024), §2.2 and Figure 3.

The idea: a layer's backward is two passes. ``B`` computes the gradient of the layer's
*input* — the previous stage waits for it; ``W`` computes the gradient of its *weights* —
nobody waits for it, so it can run whenever the rank would otherwise idle. Both schedules
keep 1F1B's shape and move W passes into the bubbles. Rank r's program:

1. warm-up forwards (ZB-H1: ``p−r``; ZB-H2: ``2(p−r)−1``, enough to fill the whole wait
   for the first B);
2. cycles ``B_k, W_{k−d}, F_{k+warm-up}``: each W runs d cycles after its B (d = r for
   ZB-H1; 2r for ZB-H2), so later ranks hold W passes back…
3. …and run them at the end, while the last B passes travel to rank 0.

With T_F = T_B = T_W the bubble of ZB-H1 is (p−1)(T_F+T_B−T_W) per rank — a third of
1F1B's (p−1)(T_F+T_B+T_W) — with 1F1B's memory (p micro-batches in flight, every rank).
ZB-H2 fills every rank's own span completely (no idle unit between a rank's first and last
pass when m ≥ 2p−1) by holding up to 2p−1 micro-batches. What remains, (p−1) units, is the
staircase at the start and end of the step (rank p−1 cannot start before p−1 forwards
reached it): the paper removes it by not synchronising before the optimizer step
("optimizer post-validation"); a synchronous step, as here and in minidist's bubble
fraction, keeps it, so both reach (p−1)/(3m+p−1) — the least any 1-chunk-per-rank schedule
can have (see :func:`~.schedule.simulate`).
"""
from __future__ import annotations

from ...defaults import ZB_H1, ZB_H2
from .schedule import Action, Schedule, check_sizes, one_chunk_per_rank


def zero_bubble_program(rank: int, micro_batches: int, warmup: int, delay: int) -> list:
    """One rank's ZB program: ``warmup`` forwards, then B / delayed W / F cycles, then the
    W passes still held back."""
    m, r = micro_batches, rank
    warmup = min(warmup, m)
    prog = [Action("F", i, r) for i in range(warmup)]
    weights = 0
    for k in range(m):
        prog.append(Action("B", k, r))
        if k >= delay:                                    # the W of the B from ``delay`` cycles ago
            prog.append(Action("W", weights, r))
            weights += 1
        if k + warmup < m:
            prog.append(Action("F", k + warmup, r))
    prog += [Action("W", i, r) for i in range(weights, m)]
    return prog


def zb_h1(ranks: int, micro_batches: int) -> Schedule:
    check_sizes(ZB_H1, ranks, micro_batches)
    acts = [zero_bubble_program(r, micro_batches, ranks - r, r) for r in range(ranks)]
    return Schedule(ZB_H1, ranks, micro_batches, one_chunk_per_rank(ranks), acts)


def zb_h2(ranks: int, micro_batches: int) -> Schedule:
    check_sizes(ZB_H2, ranks, micro_batches)
    p, m = ranks, micro_batches
    # holding W back 2r cycles fills the drain once there are enough micro-batches to
    # reach the steady state; with fewer, ZB-H1's delay of r wastes less
    delay = (lambda r: 2 * r) if m >= 2 * p - 1 else (lambda r: r)
    acts = [zero_bubble_program(r, m, 2 * (p - r) - 1, delay(r)) for r in range(p)]
    return Schedule(ZB_H2, p, m, one_chunk_per_rank(p), acts)
