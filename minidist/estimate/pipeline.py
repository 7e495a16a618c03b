"""Pipeline bubble and peak in-flight micro-batches per rank, for every schedule.

Notation: p pipeline ranks, m micro-batches per step, v model chunks per rank for the
interleaved schedule, and T_F, T_B, T_W the time of one micro-batch's forward,
input-gradient backward ("B") and weight-gradient backward ("W") through one stage of L/p
layers (a classic backward is B+W). Two ways to state the bubble are common, both given:

* ``bubble_fraction``: idle time / total time of a step, 1 − Σ busy / (p × step time) —
  what a timeline shows and what a run of minidist measures;
* ``bubble_relative``: idle time / ideal busy time, the papers' "bubble time fraction".
  For GPipe this is (p−1)/m (Huang et al. 2019; Narayanan et al. 2021 §2.2.1), and
  ``fraction = relative / (1 + relative)``.

**Synchronous flush.** Every figure here is for a step that ends when the whole pipeline
has drained, before the optimizer step — as in Megatron-LM, DeepSpeed, torch.distributed.
pipelining and minidist's executor. Then the staircase at both ends cannot be filled: rank
p−1 waits (p−1)·T_F before its first forward (a chunk's forward when a rank holds several:
(p−1)·T_F/2 for the V schedules). The zero-bubble paper (Qi et al. 2023 §4, "optimizer
post-validation") removes that synchronisation and reports **0** for ZB-H2 and ZB-V.

With T_F = T_B = T_W (the papers' comparison; the table of :func:`pipeline_bubble`):

================  =============================  ============================================
schedule          bubble fraction                peak in flight on rank r (of L/p layers)
================  =============================  ============================================
naive             (p−1)/p                        1
gpipe             (p−1)/(m+p−1)                  m
1f1b              (p−1)/(m+p−1)                  min(p−r, m)
interleaved_1f1b  (p−1)/(v·m+p−1)                (2(p−r−1) + (v−1)·p + 1)/v;  m when m = p
zb_h1             (p−1)/(3m+p−1)      (m ≥ p)    min(p, m)
zb_h2             (p−1)/(3m+p−1)      (m ≥ p)    2p−1 when m ≥ 2p−1, else min(m, 2p−1−r)
zb_v              (p−1)/(6m+p−1)      (m ≥ p)    p                    (m ≥ 2p)
dualpipe_v        (p−1)/(6m+p−1)      (m ≥ 2p)   p + 1/2
================  =============================  ============================================

Bubble time per rank with any T_F, T_B, T_W, in closed form:

* naive (p−1)·m·(T_F+T_B+T_W): one rank works at a time;
* gpipe and 1f1b (p−1)(T_F+T_B+T_W): fill and drain (GPipe; PipeDream-Flush, Narayanan
  et al. 2021, which holds min(p−r, m) micro-batches instead of GPipe's m);
* interleaved_1f1b (p−1)(T_F+T_B+T_W)/v: fill and drain in chunks v times smaller
  (Narayanan et al. 2021 §2.2.2; rank 0 holds p + (p−1)/v, Korthikanti et al. 2022 §4.2.3);
* zb_h1 (p−1)·max(T_F, T_B, T_F+T_B−T_W), plus (p−m)·min(T_F, T_B, T_W) when m < p:
  deferred W passes fill the drain, but not the ramp of forwards at the start nor of input
  gradients at the end (Qi et al. 2023 §2.2, whose (p−1)(T_F+T_B−T_W) is the last term);
  zb_h2 with m ≤ p is the same (too few micro-batches to fill anything more).

ZB-H2 (m > p) and the V schedules have a closed form only for T_F = T_B = T_W (the table);
for other times — and for zb_v with m < 2p — :func:`pipeline_bubble` simulates the schedule
that :func:`minidist.parallel.pipeline.build_schedule` makes for those times (zb_v's order
is built for them) and reports that step exactly (``method`` "simulated"). Whatever the
times, a synchronous step idles at least the staircase: (p−1)·T_F per rank with one chunk
per rank, (p−1)·T_F/2 with the V's half-size chunks (:func:`staircase`). DeepSeek's
(PP/2−1)(F&B+B−3W) for DualPipe counts forward-and-backward pairs overlapped on the GPU,
which minidist's one-pass-at-a-time ranks do not do.

Each closed form is checked against :func:`minidist.parallel.pipeline.simulate`, the run of
the schedules themselves, for p ∈ {2, 3, 4, 8} (tests/test_pipeline_estimate.py).
"""
from __future__ import annotations

import functools

from ..defaults import (DUALPIPE_V, GPIPE, INTERLEAVED_1F1B, NAIVE, ONE_F_ONE_B, SCHEDULES, ZB_H1, ZB_H2,
                        ZB_V, normalize_schedule)
from ..parallel.pipeline import build_schedule, simulate

V_SCHEDULES = (ZB_V, DUALPIPE_V)                 # two chunks per rank in a V
EQUAL_TIMES_ONLY = (ZB_H2, ZB_V, DUALPIPE_V)     # closed forms for T_F = T_B = T_W only
ASYNC_ZERO = (ZB_H2, ZB_V)                       # the paper's 0 needs an asynchronous optimizer step
ASYNC_NOTE = ("synchronous flush before the optimizer step; Qi et al. 2023 report 0 for ZB-H2 and ZB-V "
              "by dropping that synchronisation (optimizer post-validation)")


def check_pipeline(schedule: str, p: int, m: int, v: int = 1) -> str:
    """The canonical name of ``schedule`` if it can run m micro-batches on p ranks; otherwise a
    ValueError that names the schedule and the micro-batch count it needs."""
    schedule = normalize_schedule(schedule)
    for name, value in (("p", p), ("m", m), ("v", v)):
        if isinstance(value, bool) or int(value) != value or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    if schedule == INTERLEAVED_1F1B and m % p:
        raise ValueError(f"{INTERLEAVED_1F1B!r} needs micro-batches m ({m}) divisible by the pipeline ranks "
                         f"p ({p}); use " + (f"{m - m % p} or {m - m % p + p}" if m > p else f"{p}"))
    if schedule == DUALPIPE_V and m < 2 * p:
        raise ValueError(f"{schedule!r} needs at least 2 × pipeline ranks = {2 * p} micro-batches, got m = {m}")
    return schedule


def runnable(p: int, m: int) -> list:
    """The schedules that can run m micro-batches on p ranks, in :data:`SCHEDULES` order."""
    return [s for s in SCHEDULES if _can_run(s, p, m)]


def _can_run(schedule: str, p: int, m: int) -> bool:
    try:
        check_pipeline(schedule, p, m)
    except ValueError:
        return False
    return True


def simulated(schedule: str, p: int, m: int, v: int = 1, times=(1.0, 1.0, 1.0)) -> dict:
    """Idle time per rank and peak in flight per rank of the schedule ``build_schedule`` makes
    for these pass times, from its simulation — where no closed form applies."""
    bubble, per_rank = _simulated(schedule, p, m, v, tuple(float(t) for t in times))
    return {"bubble_time": bubble, "peak_in_flight_per_rank": list(per_rank)}


@functools.lru_cache(maxsize=256)
def _simulated(schedule: str, p: int, m: int, v: int, times: tuple) -> tuple:
    tl = simulate(build_schedule(schedule, p, m, v, times=times), *times)
    return tl.step_time - sum(tl.busy) / p, tuple(tl.peak_in_flight)


def _closed_form(schedule: str, p: int, m: int, times: tuple) -> bool:
    """Whether the formulas of the module docstring hold for these (canonical) arguments."""
    if schedule not in EQUAL_TIMES_ONLY or schedule == ZB_H2 and m <= p:
        return True
    return times[0] == times[1] == times[2] and (schedule != ZB_V or m >= 2 * p)


def peak_in_flight_per_rank(schedule: str, p: int, m: int, v: int = 1, times=(1.0, 1.0, 1.0)) -> list:
    """Per pipeline rank, the peak number of micro-batches whose activations it holds, in
    micro-batches of one stage's L/p layers (a chunk of v per rank counts 1/v)."""
    schedule = check_pipeline(schedule, p, m, v)
    if not _closed_form(schedule, p, m, tuple(times)):
        return simulated(schedule, p, m, v, times)["peak_in_flight_per_rank"]
    if schedule == NAIVE:
        return [1.0] * p
    if schedule == GPIPE:
        return [float(m)] * p                    # all forwards before any backward
    if schedule == INTERLEAVED_1F1B:             # v = 1 included: its warm-up is still 2(p−r−1), not 1F1B's
        if m == p:                               # Megatron: every forward is warm-up
            return [float(m)] * p
        # Megatron's warm-up on rank r, 2(p−r−1) + (v−1)·p chunk forwards, + 1 in steady state
        return [min(2 * (p - r - 1) + (v - 1) * p + 1, m * v) / v for r in range(p)]
    if schedule == ONE_F_ONE_B:
        return [float(min(p - r, m)) for r in range(p)]
    if schedule == ZB_H1:
        return [float(min(p, m))] * p            # p−r warm-up forwards, W held back r cycles
    if schedule == ZB_H2:
        if m >= 2 * p - 1:                       # 2(p−r)−1 warm-up forwards, W held back 2r cycles
            return [float(2 * p - 1)] * p
        return [float(min(m, 2 * p - 1 - r)) for r in range(p)]
    if schedule == ZB_V:
        return [float(p)] * p                    # 2p chunk-micro-batches: 1F1B's memory
    return [p + 0.5] * p                         # dualpipe_v


def peak_in_flight(schedule: str, p: int, m: int, v: int = 1, times=(1.0, 1.0, 1.0)) -> float:
    """Micro-batches (of L/p layers each) in flight on the busiest rank — the first one for
    every schedule here at equal times — which sizes the activation memory of a device."""
    return max(peak_in_flight_per_rank(schedule, p, m, v, times))


def staircase(schedule: str, p: int, v: int = 1, t_f: float = 1.0) -> float:
    """Idle time per rank that no synchronous schedule of this shape can avoid, whatever the
    times: rank p−1 starts with a forward of its first chunk, which waits for p−1 forwards of
    a chunk on the ranks before it, (p−1)·T_F/c with c chunks per rank (c = v for interleaved
    1F1B, 2 for the V schedules); every rank has the same work, so each idles that long."""
    schedule = normalize_schedule(schedule)
    chunks = v if schedule == INTERLEAVED_1F1B else 2 if schedule in V_SCHEDULES else 1
    return (p - 1) * t_f / chunks


def bubble_time(schedule: str, p: int, m: int, v: int = 1, t_f: float = 1.0, t_b: float = 1.0,
                t_w: float = 1.0) -> float:
    """Idle time per rank of one synchronous step, in the units of ``t_f``, ``t_b``, ``t_w``
    (times of one stage of L/p layers; see the module docstring for each formula)."""
    schedule = check_pipeline(schedule, p, m, v)
    if not _closed_form(schedule, p, m, (t_f, t_b, t_w)):
        return simulated(schedule, p, m, v, (t_f, t_b, t_w))["bubble_time"]
    whole = t_f + t_b + t_w                      # forward and the whole backward
    if schedule == NAIVE:
        return (p - 1) * m * whole
    if schedule in (GPIPE, ONE_F_ONE_B):
        return (p - 1) * whole
    if schedule == INTERLEAVED_1F1B:
        return (p - 1) * whole / v
    if schedule in (ZB_H1, ZB_H2) and not (schedule == ZB_H2 and m > p):
        # ramps of F (start) and B (end) that W cannot fill
        return (p - 1) * max(t_f, t_b, t_f + t_b - t_w) + max(0, p - m) * min(t_f, t_b, t_w)
    return staircase(schedule, p, v, t_f)        # equal times: zb_h2 (m > p) and the V schedules


def pipeline_bubble(schedule: str, p: int, m: int, v: int = 1, t_f: float = 1.0,
                    t_b: float = 1.0, t_w: float = 1.0) -> dict:
    """Bubble of one synchronous training step of ``schedule`` with p ranks and m micro-batches.

    Times ``t_f``, ``t_b``, ``t_w`` default to equal unit times (the papers' T_F=T_B=T_W).
    Returns ``bubble_time`` (per rank, in those units), ``ideal_time`` m·(T_F+T_B+T_W),
    ``bubble_fraction`` (of the whole step), ``bubble_relative`` (to the ideal time),
    ``peak_in_flight`` (busiest rank) and ``peak_in_flight_per_rank``, ``method``
    ("closed form" or "simulated", see the module docstring) and a ``note``.
    """
    schedule = check_pipeline(schedule, p, m, v)
    times = (t_f, t_b, t_w)
    bubble = bubble_time(schedule, p, m, v, *times)
    ideal = m * (t_f + t_b + t_w)
    notes = [ASYNC_NOTE] if schedule in ASYNC_ZERO else []
    closed = _closed_form(schedule, p, m, times)
    if not closed:
        notes.append(f"simulated: no closed form for {schedule} with these times and micro-batches; the step of "
                     f"the schedule minidist builds for them")
    per_rank = peak_in_flight_per_rank(schedule, p, m, v, times)
    return {
        "schedule": schedule, "p": p, "m": m, "v": v if schedule == INTERLEAVED_1F1B else 1,
        "chunks_per_rank": v if schedule == INTERLEAVED_1F1B else 2 if schedule in V_SCHEDULES else 1,
        "bubble_time": bubble, "ideal_time": ideal,
        "bubble_fraction": bubble / (bubble + ideal),
        "bubble_relative": bubble / ideal,
        "peak_in_flight": max(per_rank),
        "peak_in_flight_per_rank": per_rank,
        "method": "closed form" if closed else "simulated",
        "note": "; ".join(notes),
    }
