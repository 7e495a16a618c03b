"""The V schedules: two chunks per rank in a V, so rank 0 holds the first and the last chunk.

With p ranks the model is cut into 2p chunks; chunk s < p lives on rank s and chunk s ≥ p
on rank 2p−1−s (:func:`~.schedule.v_shape`). A micro-batch goes down the ranks and comes
back up; the loss is computed on rank 0, where the backward starts right away.

* ``zb_v`` — Qi et al. 2023, "Zero Bubble Pipeline Parallelism" §6 (ZB-V), B/W split, built
  for the pass times T_F, T_B, T_W it is given (equal by default) and a memory limit of at
  most ``max_in_flight`` micro-batches of L/p layers per rank (default p, 1F1B's memory):

  1. the order of F and B passes on each rank is the paper's hand-made ZB-V, the order
     torch's ``ScheduleZBVZeroBubble`` runs (:func:`zb_v_program`: chunk-0 forwards fill the
     V, then one F, B, W per chunk in turn, then the W passes held back to the end); like
     torch it is written for max(2p−1, m) micro-batches and the passes of micro-batches
     ≥ m are dropped, so any m ≥ 1 runs;
  2. the W passes, which nobody waits for, are then placed on a clock that runs F, B and W
     in T_F, T_B, T_W (:func:`place_weight_passes`): a rank whose next F or B has no input
     yet runs a pending W instead — every time it waits ("fill"), or only when the W ends
     before that input arrives ("fit") — and runs one before an F that would exceed the
     memory limit;
  3. of the hand-made order and the two placements, the one with the shortest simulated
     step for these times is kept (then the least memory, then the hand-made one), so the
     result is never slower than torch's order for any times.

  This is not the paper's automatic scheduler (its heuristic also reorders F and B, and
  an ILP refines it); only the W passes move with the times here. With T_F = T_B = T_W and
  m ≥ p the step has the least idle time a V of 2p chunks can have (see below).
* ``dualpipe_v`` — DeepSeek-AI 2024, DeepSeek-V3 technical report §3.2.1 (DualPipe), in its
  "cut in half" V form (github.com/deepseek-ai/DualPipe, torch's ``ScheduleDualPipeV``):
  eight phases per rank — forwards of chunk 0, then of both chunks, then B/W/F on chunk 1,
  then the main phase of F0 with B1 and F1 with B0 pairs, then drain with full backwards,
  switching to B/W-split halfway so the deferred W passes fill the tail. Holds p+½
  micro-batches; needs m ≥ 2p (as torch's). Its order does not depend on the times.
  DualPipe's purpose — running one micro-batch's forward *during* another's backward so
  that the communication of one (the expert all-to-all) hides behind the compute of the
  other — is ``Schedule.overlap``: the (F, B) pairs of phases 4 and 5 (all but the bottom
  rank's first, which DualPipe runs apart), run overlapped by the executor with
  ``parallel.overlap_f_b`` (:mod:`.overlap`); without it a pair is simply F then B.

Rank p−1 cannot start before p−1 chunk forwards have reached it, so with any times a V
schedule idles at least (p−1)·T_F/2 per rank — half of a one-chunk schedule's (p−1)·T_F,
because a chunk holds half the layers. With T_F = T_B = T_W both reach it (zb_v for m ≥ p,
dualpipe_v for m ≥ 2p): bubble fraction (p−1)/(6m+p−1), below ZB-H1's (p−1)/(3m+p−1).
"""
from __future__ import annotations

from ...defaults import DUALPIPE_V, ZB_H1, ZB_V
from .schedule import Action, Schedule, ScheduleError, check_sizes, simulate, v_shape

EQUAL_TIMES = (1.0, 1.0, 1.0)


def check_times(name: str, times) -> tuple:
    """``times`` as three positive floats (T_F, T_B, T_W of one stage), or a ValueError."""
    try:
        out = tuple(float(t) for t in times)
    except (TypeError, ValueError):
        out = ()
    if len(out) != 3 or not all(t > 0 for t in out):
        raise ValueError(f"schedule {name!r}: pass times must be three positive numbers (T_F, T_B, T_W), "
                         f"got {times!r}")
    return out


def zb_v(ranks: int, micro_batches: int, times=EQUAL_TIMES, max_in_flight: float | None = None) -> Schedule:
    check_sizes(ZB_V, ranks, micro_batches)
    p, m, times = ranks, micro_batches, check_times(ZB_V, times)
    limit = 2 * p if max_in_flight is None else 2 * max_in_flight    # in chunk activations (half a stage)
    if limit < 2 * p or limit != int(limit):
        raise ValueError(f"schedule {ZB_V!r}: max_in_flight must be a multiple of 1/2 and at least the "
                         f"{p} micro-batches its order holds on {p} ranks, got {max_in_flight!r}")
    hand_made = Schedule(ZB_V, p, m, v_shape(p), [zb_v_program(r, p, m) for r in range(p)], times)
    candidates = [hand_made] + [place_weight_passes(hand_made, times, int(limit), fill) for fill in (True, False)]
    return min(candidates, key=lambda s: _cost(s, times))      # min keeps the first of equals


def _cost(s: Schedule, times: tuple) -> tuple:
    tl = simulate(s, *times)
    return round(tl.step_time, 9), max(tl.in_flight)


def dualpipe_v(ranks: int, micro_batches: int, times=EQUAL_TIMES) -> Schedule:
    check_sizes(DUALPIPE_V, ranks, micro_batches)
    if micro_batches < 2 * ranks:
        raise ValueError(f"schedule {DUALPIPE_V!r} needs at least 2 × pipeline ranks = {2 * ranks} micro-batches "
                         f"(gradient_accumulation_steps), got {micro_batches}; raise gradient_accumulation_steps "
                         f"or use {ZB_V!r} or {ZB_H1!r}")
    p, m = ranks, micro_batches
    programs = [_VRank(r, p) for r in range(p)]
    acts = [v.dualpipe_v(m) for v in programs]
    pairs = tuple(pair for v in programs for pair in v.pairs)
    return Schedule(DUALPIPE_V, p, m, v_shape(p), acts, check_times(DUALPIPE_V, times), overlap=pairs)


def zb_v_program(rank: int, ranks: int, micro_batches: int) -> list:
    """Rank ``rank``'s hand-made ZB-V program (F, B and W), for any micro_batches ≥ 1."""
    padded = max(micro_batches, 2 * ranks - 1)
    return [a for a in _VRank(rank, ranks).zb_v(padded) if a.micro_batch < micro_batches]


class _VRank:
    """One rank's program being written; chunk 0 = stage r (going down), chunk 1 = stage 2p−1−r."""

    def __init__(self, r: int, p: int):
        self.r, self.p = r, p
        self.stage = (r, 2 * p - 1 - r)
        self.nf, self.nb = [0, 0], [0, 0]
        self.weights: list = []         # (i, chunk) whose B ran split, W still to do, oldest first
        self.prog: list = []
        self.pairs: list = []           # (F, B) written one after the other to run overlapped

    def pair(self) -> None:
        """The last two actions (an F, then a whole B) are one of DualPipe's overlapped pairs."""
        self.pairs.append((self.prog[-2], self.prog[-1]))

    def F(self, c: int) -> None:
        self.prog.append(Action("F", self.nf[c], self.stage[c]))
        self.nf[c] += 1

    def B(self, c: int, split: bool = True) -> None:
        self.prog.append(Action("B", self.nb[c], self.stage[c]))
        if split:
            self.weights.append((self.nb[c], c))
        self.nb[c] += 1

    def W(self, c: int | None = None) -> None:
        """The oldest W still to do (of chunk ``c`` if given)."""
        k = next(k for k, (_, cc) in enumerate(self.weights) if c is None or cc == c)
        i, cc = self.weights.pop(k)
        self.prog.append(Action("W", i, self.stage[cc]))

    def zb_v(self, m: int) -> list:
        r, p = self.r, self.p
        for _ in range(2 * (p - r) - 1):                 # 1: chunk-0 forwards fill the V
            self.F(0)
        for _ in range(r):                               # 2: both chunks
            self.F(1)
            self.F(0)
        for _ in range(p - r):                           # 3: the first backwards, on chunk 1
            self.F(1)
            self.B(1)
            self.W(1)
        while self.nf[1] < self.nf[0] or self.nf[0] < m:  # 4: steady state, F B W on each chunk
            if self.nf[0] < m:
                self.F(0)
            self.B(0)
            self.W(0)
            self.F(1)
            self.B(1)
            self.W(1)
        for _ in range(r):                               # 5: cool-down, W passes held back
            self.B(0)
            self.B(1)
        for _ in range(p - r):
            self.B(0)
            self.W(0)
        while self.weights:                              # 6: the held-back W passes, chunk 1 first
            self.W(1 if any(c == 1 for _, c in self.weights) else 0)
        return self.prog

    def dualpipe_v(self, m: int) -> list:
        r, p = self.r, self.p
        for _ in range(2 * (p - r - 1)):                 # 1: forwards of chunk 0 fill the V
            self.F(0)
        for _ in range(r + 1):                           # 2: both chunks
            self.F(0)
            self.F(1)
        for _ in range(p - r - 1):                       # 3: B/W/F on chunk 1 (zero-bubble style)
            self.B(1)
            self.W()
            self.F(1)
        for k in range(m - 2 * p + r + 1):               # 4: main phase, F0&B1 then F1&B0
            self.F(0)
            self.B(1, split=False)
            if k > 0 or r < p - 1:      # DualPipe runs the bottom rank's first pair apart (less bubble)
                self.pair()
            self.F(1)
            self.B(0, split=False)
            self.pair()
        for _ in range(p - r - 1):                       # 5: no chunk-0 forwards left
            self.B(1, split=False)
            self.F(1)
            self.B(0, split=False)
            self.pair()
        half = (r + 1) // 2
        for i in range(r + 1):                           # 6: backwards; split from halfway on
            self.B(1, split=i > half or (i == half and r % 2 == 1))
            self.B(0, split=i >= half)
        for _ in range(p - r - 1):                       # 7: a deferred W, a split B0
            self.W()
            self.B(0)
        while self.weights:                              # 8: the remaining W passes
            self.W()
        return self.prog


def place_weight_passes(s: Schedule, times: tuple, limit: int, fill: bool) -> Schedule:
    """``s`` with every rank's F and B in the same order and its W passes placed by a clock on
    which F, B, W take ``times``: when a rank's next F or B has no input yet, it runs its
    oldest pending W — always (``fill``) or only if the W ends before that input arrives —
    and it runs one before an F that would hold more than ``limit`` chunk activations.
    Every B of ``s`` must be split (have a W)."""
    p, n = s.ranks, s.n_stages
    dur = dict(zip("FBW", times))
    todo = [[a for a in acts if a.op != "W"] for acts in s.actions]
    pos, free, held = [0] * p, [0.0] * p, [0] * p
    pending: list = [[] for _ in range(p)]              # B done, W not yet: (i, stage), oldest first
    end: dict = {}                                      # (op, i, stage) -> time it ends
    acts: list = [[] for _ in range(p)]
    left, now = sum(len(a) for a in s.actions), 0.0
    while left:
        events = []                                     # times something may change
        for r in range(p):
            if free[r] > now:
                events.append(free[r])
                continue
            nxt = todo[r][pos[r]] if pos[r] < len(todo[r]) else None
            ready = _input_time(nxt, n, end) if nxt else None
            over = nxt is not None and nxt.op == "F" and held[r] >= limit
            if nxt is not None and not over and ready is not None and ready <= now:
                a = nxt
                pos[r] += 1
                if a.op == "F":
                    held[r] += 1
                else:
                    pending[r].append((a.micro_batch, a.stage))
            elif pending[r] and (over or fill or ready is None or now + dur["W"] <= ready):
                a = Action("W", *pending[r].pop(0))
                held[r] -= 1
            else:
                if ready is not None and ready > now:
                    events.append(ready)
                continue
            acts[r].append(a)
            free[r] = end[(a.op, a.micro_batch, a.stage)] = now + dur[a.op]
            events.append(free[r])
            left -= 1
        if left and not events:
            raise ScheduleError(f"{s.name}: placing W passes deadlocked (memory limit {limit} chunk activations)")
        now = min(events, default=now)
    return Schedule(s.name, p, s.micro_batches, s.stage_to_rank, acts, times)


def _input_time(a: Action, n_stages: int, end: dict):
    """When the inputs of F or B ``a`` exist, or None if one is not computed yet."""
    if a.op == "F":
        deps = [("F", a.micro_batch, a.stage - 1)] if a.stage > 0 else []
    else:
        deps = [("F", a.micro_batch, a.stage)] + ([("B", a.micro_batch, a.stage + 1)] if a.stage < n_stages - 1
                                                   else [])
    ts = [end.get(d) for d in deps]
    return None if None in ts else max(ts, default=0.0)
