"""The V schedules: two chunks per rank in a V, so rank 0 holds the first and the last chunk.

With p ranks the model is cut into 2p chunks; chunk s < p lives on rank s and chunk s ≥ p
on rank 2p−1−s (:func:`~.schedule.v_shape`). A micro-batch goes down the ranks and comes
back up; the loss is computed on rank 0, where the backward starts right away. Both need
m ≥ 2p micro-batches (torch's ``ScheduleZBVZeroBubble`` and ``ScheduleDualPipeV`` too).

* ``zb_v`` — Qi et al. 2023, "Zero Bubble Pipeline Parallelism" §6 (ZB-V): B/W split, at
  most 2p chunk-micro-batches (= p micro-batches of L/p layers, 1F1B's memory) in flight
  per rank. Built here the way the paper's automatic scheduler works: every rank, whenever
  it is free, takes the first of: a ready B (lowest chunk first), a ready F if under the
  memory limit (the returning chunk first), a pending W.
* ``dualpipe_v`` — DeepSeek-AI 2024, DeepSeek-V3 technical report §3.2.1 (DualPipe), in its
  "cut in half" V form (github.com/deepseek-ai/DualPipe, torch's ``ScheduleDualPipeV``):
  eight phases per rank — forwards of chunk 0, then of both chunks, then B/W/F on chunk 1,
  then the main phase of F0 with B1 and F1 with B0 pairs (on a GPU each pair runs as one
  overlapped computation/communication step), then drain with full backwards, switching to
  B/W-split halfway so the deferred W passes fill the tail. Holds p+½ micro-batches.

With T_F = T_B = T_W both reach (p−1)/(6m+p−1): the bubble is made of chunk passes half
the size of ZB-H1's, the least a V of 2p chunks can have (rank p−1's first forward cannot
start before p−1 chunk forwards) — below ZB-H1's (p−1)/(3m+p−1).
"""
from __future__ import annotations

from ...defaults import DUALPIPE_V, ZB_H1, ZB_V
from .schedule import Action, Schedule, check_sizes, v_shape


def _check_v(name: str, ranks: int, micro_batches: int) -> None:
    check_sizes(name, ranks, micro_batches)
    if micro_batches < 2 * ranks:
        raise ValueError(f"schedule {name!r} needs at least 2 × pipeline ranks = {2 * ranks} micro-batches "
                         f"(gradient_accumulation_steps), got {micro_batches}; raise gradient_accumulation_steps "
                         f"or use {ZB_H1!r}")


def zb_v(ranks: int, micro_batches: int) -> Schedule:
    _check_v(ZB_V, ranks, micro_batches)
    p, m, stages = ranks, micro_batches, v_shape(ranks)
    n = len(stages)
    end: dict = {}                      # (op, i, s) -> unit time it ends
    next_f, next_b = [0] * n, [0] * n   # next micro-batch to run F / B on each chunk
    pending_w = [[] for _ in range(p)]  # B done, W not yet: (i, s) in order
    held, free = [0] * p, [0] * p
    acts = [[] for _ in range(p)]
    t, left = 0, 3 * m * n

    def done(key) -> bool:
        return end.get(key, t + 1) <= t

    while left:
        for r in range(p):
            if free[r] > t:
                continue
            mine = [s for s in range(n) if stages[s] == r]
            ready_b = [s for s in mine if next_b[s] < m and done(("F", next_b[s], s))
                       and (s == n - 1 or done(("B", next_b[s], s + 1)))]
            ready_f = [s for s in mine if next_f[s] < m and held[r] < 2 * p
                       and (s == 0 or done(("F", next_f[s], s - 1)))]
            if ready_b:
                s = min(ready_b)
                a = Action("B", next_b[s], s)
                next_b[s] += 1
                pending_w[r].append((a.micro_batch, s))
            elif ready_f:
                s = max(ready_f)
                a = Action("F", next_f[s], s)
                next_f[s] += 1
                held[r] += 1
            elif pending_w[r]:
                a = Action("W", *pending_w[r].pop(0))
                held[r] -= 1
            else:
                continue
            acts[r].append(a)
            end[(a.op, a.micro_batch, a.stage)] = free[r] = t + 1
            left -= 1
        t += 1
    return Schedule(ZB_V, p, m, stages, acts)


def dualpipe_v(ranks: int, micro_batches: int) -> Schedule:
    _check_v(DUALPIPE_V, ranks, micro_batches)
    p, m = ranks, micro_batches
    acts = []
    for r in range(p):
        acts.append(_DualPipeVRank(r, p, m).program())
    return Schedule(DUALPIPE_V, p, m, v_shape(p), acts)


class _DualPipeVRank:
    """The eight phases of one rank; chunk 0 = stage r (going down), chunk 1 = stage 2p−1−r."""

    def __init__(self, r: int, p: int, m: int):
        self.r, self.p, self.m = r, p, m
        self.stage = (r, 2 * p - 1 - r)
        self.nf, self.nb = [0, 0], [0, 0]
        self.weights: list = []         # (i, stage) whose B ran split, W still to do
        self.prog: list = []

    def F(self, c: int) -> None:
        self.prog.append(Action("F", self.nf[c], self.stage[c]))
        self.nf[c] += 1

    def B(self, c: int, split: bool = False) -> None:
        self.prog.append(Action("B", self.nb[c], self.stage[c]))
        if split:
            self.weights.append((self.nb[c], self.stage[c]))
        self.nb[c] += 1

    def W(self) -> None:
        self.prog.append(Action("W", *self.weights.pop(0)))

    def program(self) -> list:
        r, p, m = self.r, self.p, self.m
        for _ in range(2 * (p - r - 1)):                 # 1: forwards of chunk 0 fill the V
            self.F(0)
        for _ in range(r + 1):                           # 2: both chunks
            self.F(0)
            self.F(1)
        for _ in range(p - r - 1):                       # 3: B/W/F on chunk 1 (zero-bubble style)
            self.B(1, split=True)
            self.W()
            self.F(1)
        for _ in range(m - 2 * p + r + 1):               # 4: main phase, F0&B1 then F1&B0
            self.F(0)
            self.B(1)
            self.F(1)
            self.B(0)
        for _ in range(p - r - 1):                       # 5: no chunk-0 forwards left
            self.B(1)
            self.F(1)
            self.B(0)
        half = (r + 1) // 2
        for i in range(r + 1):                           # 6: backwards; split from halfway on
            self.B(1, split=i > half or (i == half and r % 2 == 1))
            self.B(0, split=i >= half)
        for _ in range(p - r - 1):                       # 7: a deferred W, a split B0
            self.W()
            self.B(0, split=True)
        while self.weights:                              # 8: the remaining W passes
            self.W()
        return self.prog
