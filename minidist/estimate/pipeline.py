"""Pipeline bubble and peak in-flight micro-batches per rank, for every schedule (SPEC §6.3, §8).

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
p−1 waits (p−1)·T_F before its first forward. The zero-bubble paper (Qi et al. 2023 §4,
"optimizer post-validation") removes that synchronisation and reports **0** for ZB-H2 and
ZB-V; with a synchronous step those schedules keep (p−1) units of idle time per rank, the
least any schedule of their shape can have.

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
zb_v              (p−1)/(6m+p−1)      (m ≥ 2p)   p
dualpipe_v        (p−1)/(6m+p−1)      (m ≥ 2p)   p + 1/2
================  =============================  ============================================

Bubble time per rank with any T_F, T_B, T_W (what :func:`pipeline_bubble` computes):

* naive (p−1)·m·(T_F+T_B+T_W): one rank works at a time;
* gpipe and 1f1b (p−1)(T_F+T_B+T_W): fill and drain (GPipe; PipeDream-Flush, Narayanan
  et al. 2021, which holds min(p−r, m) micro-batches instead of GPipe's m);
* interleaved_1f1b (p−1)(T_F+T_B+T_W)/v: fill and drain in chunks v times smaller
  (Narayanan et al. 2021 §2.2.2; rank 0 holds p + (p−1)/v, Korthikanti et al. 2022 §4.2.3);
* zb_h1 (p−1)·max(T_F, T_B, T_F+T_B−T_W), plus (p−m)·min(T_F, T_B, T_W) when m < p:
  deferred W passes fill the drain, but not the ramp of forwards at the start nor of input
  gradients at the end (Qi et al. 2023 §2.2, whose (p−1)(T_F+T_B−T_W) is the last term);
* zb_h2 (p−1)·max(T_F, T_F+T_B−2T_W) when m > p (the paper's (p−1)(T_F+T_B−2T_W) is the
  asynchronous figure), as zb_h1 when m ≤ p (too few micro-batches to fill anything more);
* zb_v and dualpipe_v (p−1)·max(T_F, T_F+T_B−2T_W)/2: the ZB-H2 staircase made of
  half-size chunks (Qi et al. 2023 §6; DeepSeek-AI 2024, DeepSeek-V3 §3.2.1). DeepSeek's
  own (PP/2−1)(F&B+B−3W) counts forward-and-backward pairs overlapped on the GPU, which
  minidist's one-pass-at-a-time ranks do not do.

The first four and zb_h1 are exact for any times. minidist builds ZB-H2's warm-up and the V
schedules' action order for T_F = T_B = T_W, where their formulas are exact too; with other
times the same order leaves more idle time, and the figure is a lower bound (``note``).

Each formula is checked against :func:`minidist.parallel.pipeline.simulate`, the unit-time
run of the schedules themselves, for p ∈ {2, 3, 4, 8} (tests/test_pipeline_estimate.py).
"""
from __future__ import annotations

from ..defaults import (DUALPIPE_V, GPIPE, INTERLEAVED_1F1B, NAIVE, ONE_F_ONE_B, SCHEDULES, ZB_H1, ZB_H2,
                        ZB_V, normalize_schedule)

V_SCHEDULES = (ZB_V, DUALPIPE_V)                 # two chunks per rank in a V
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
                         f"p ({p}); use {max(p, m - m % p)} or {m - m % p + p}")
    if schedule in V_SCHEDULES and m < 2 * p:
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


def peak_in_flight_per_rank(schedule: str, p: int, m: int, v: int = 1) -> list:
    """Per pipeline rank, the peak number of micro-batches whose activations it holds, in
    micro-batches of one stage's L/p layers (a chunk of v per rank counts 1/v)."""
    schedule = check_pipeline(schedule, p, m, v)
    if schedule == NAIVE:
        return [1.0] * p
    if schedule == GPIPE:
        return [float(m)] * p                    # all forwards before any backward
    if schedule == INTERLEAVED_1F1B and v > 1:
        if m == p:                               # Megatron: every forward is warm-up
            return [float(m)] * p
        # Megatron's warm-up on rank r, 2(p−r−1) + (v−1)·p chunk forwards, + 1 in steady state
        return [(2 * (p - r - 1) + (v - 1) * p + 1) / v for r in range(p)]
    if schedule in (ONE_F_ONE_B, INTERLEAVED_1F1B):
        return [float(min(p - r, m)) for r in range(p)]
    if schedule == ZB_H1:
        return [float(min(p, m))] * p            # p−r warm-up forwards, W held back r cycles
    if schedule == ZB_H2:
        if m >= 2 * p - 1:                       # 2(p−r)−1 warm-up forwards, W held back 2r cycles
            return [float(2 * p - 1)] * p
        return [float(min(m, 2 * p - 1 - r)) for r in range(p)]
    if schedule == ZB_V:
        return [float(p)] * p                    # at most 2p chunk-micro-batches: 1F1B's memory
    return [p + 0.5] * p                         # dualpipe_v


def peak_in_flight(schedule: str, p: int, m: int, v: int = 1) -> float:
    """Micro-batches (of L/p layers each) in flight on the busiest rank — the first one for
    every schedule here — which sizes the activation memory of a device."""
    return max(peak_in_flight_per_rank(schedule, p, m, v))


def bubble_time(schedule: str, p: int, m: int, v: int = 1, t_f: float = 1.0, t_b: float = 1.0,
                t_w: float = 1.0) -> float:
    """Idle time per rank of one synchronous step, in the units of ``t_f``, ``t_b``, ``t_w``
    (times of one stage of L/p layers; see the module docstring for each formula)."""
    schedule = check_pipeline(schedule, p, m, v)
    whole = t_f + t_b + t_w                      # forward and the whole backward
    staircase = max(t_f, t_f + t_b - 2 * t_w)    # what W passes cannot fill (ZB-H2's shape)
    if schedule == NAIVE:
        return (p - 1) * m * whole
    if schedule in (GPIPE, ONE_F_ONE_B):
        return (p - 1) * whole
    if schedule == INTERLEAVED_1F1B:
        return (p - 1) * whole / v
    if schedule == ZB_H2 and m > p:
        return (p - 1) * staircase
    if schedule in (ZB_H1, ZB_H2):              # ramps of F (start) and B (end) that W cannot fill
        return (p - 1) * max(t_f, t_b, t_f + t_b - t_w) + max(0, p - m) * min(t_f, t_b, t_w)
    return (p - 1) * staircase / 2               # zb_v, dualpipe_v: chunks of L/(2p) layers


def pipeline_bubble(schedule: str, p: int, m: int, v: int = 1, t_f: float = 1.0,
                    t_b: float = 1.0, t_w: float = 1.0) -> dict:
    """Bubble of one synchronous training step of ``schedule`` with p ranks and m micro-batches.

    Times ``t_f``, ``t_b``, ``t_w`` default to equal unit times (the papers' T_F=T_B=T_W).
    Returns ``bubble_time`` (per rank, in those units), ``ideal_time`` m·(T_F+T_B+T_W),
    ``bubble_fraction`` (of the whole step), ``bubble_relative`` (to the ideal time),
    ``peak_in_flight`` (busiest rank) and ``peak_in_flight_per_rank``, and a ``note``.
    """
    schedule = check_pipeline(schedule, p, m, v)
    bubble = bubble_time(schedule, p, m, v, t_f, t_b, t_w)
    ideal = m * (t_f + t_b + t_w)
    notes = [ASYNC_NOTE] if schedule in ASYNC_ZERO else []
    if (schedule in V_SCHEDULES or schedule == ZB_H2 and m > p) and not t_f == t_b == t_w:
        notes.append(f"a lower bound: minidist builds {schedule} for T_F = T_B = T_W")
    per_rank = peak_in_flight_per_rank(schedule, p, m, v)
    return {
        "schedule": schedule, "p": p, "m": m, "v": v if schedule == INTERLEAVED_1F1B else 1,
        "chunks_per_rank": v if schedule == INTERLEAVED_1F1B else 2 if schedule in V_SCHEDULES else 1,
        "bubble_time": bubble, "ideal_time": ideal,
        "bubble_fraction": bubble / (bubble + ideal),
        "bubble_relative": bubble / ideal,
        "peak_in_flight": max(per_rank),
        "peak_in_flight_per_rank": per_rank,
        "note": "; ".join(notes),
    }
