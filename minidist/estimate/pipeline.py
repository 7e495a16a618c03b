"""Pipeline bubble and peak in-flight micro-batches, per schedule.

Notation: p pipeline stages, m micro-batches per step, v virtual stages (model chunks) per
device for the interleaved schedule, and T_F, T_B, T_W the time of one micro-batch's
forward, input-gradient backward ("B") and weight-gradient backward ("W") on one stage
(a classic backward is B+W). Two ways to state the bubble are common, and both are given:

* ``bubble_fraction``: idle time / total time of a step (what a timeline shows);
* ``bubble_relative``: idle time / ideal busy time, the papers' "bubble time fraction".
  For GPipe this is (p−1)/m (Huang et al. 2019; Narayanan et al. 2021 §2.2.1), and
  ``fraction = relative / (1 + relative)``.

================  ================================  =======================  ==============
schedule          bubble time                       relative (T_F=T_B=T_W)   peak in flight
================  ================================  =======================  ==============
naive             (p−1)·m·(T_F+T_B+T_W)             p−1                      1
gpipe             (p−1)(T_F+T_B+T_W)                (p−1)/m                  m
1f1b              (p−1)(T_F+T_B+T_W)                (p−1)/m                  min(p, m)
interleaved_1f1b  (p−1)(T_F+T_B+T_W)/v              (p−1)/(v·m)              p + (p−1)/v
zb_h1             (p−1)(T_F+T_B−T_W)                (p−1)/(3m)               p
zb_h2             (p−1)·max(0, T_F+T_B−2T_W)        0                        2p−1
zb_v              ≈ 0 (when m ≥ 2p)                 0                        p
================  ================================  =======================  ==============

Sources: GPipe (Huang et al. 2019); 1F1B / PipeDream-Flush (Narayanan et al. 2021) has
GPipe's bubble but holds at most p micro-batches on the first stage instead of m;
interleaved 1F1B (Narayanan et al. 2021 §2.2.2) divides the bubble by v and, per
Korthikanti et al. 2022 §4.2.3, holds p·(1 + (p−1)/(p·v)) stage-micro-batches on the
first device; ZB-H1, ZB-H2 and ZB-V (Qi et al. 2023, "Zero Bubble Pipeline Parallelism",
§2 and §6) split backward into B and W and fill the bubble with deferred W passes: ZB-H1
keeps 1F1B's memory and leaves about a third of its bubble, ZB-H2 spends 2p−1
micro-batches of memory for zero bubble, ZB-V (two chunks per device in a V shape) reaches
zero bubble with 1F1B's memory. "Peak in flight" counts micro-batches of one stage's
layers (L/p layers) whose activations the first device holds at once.
"""
from __future__ import annotations

from ..defaults import (DUALPIPE_V, GPIPE, INTERLEAVED_1F1B, NAIVE, ONE_F_ONE_B, SCHEDULES, ZB_H1, ZB_H2,
                        ZB_V, normalize_schedule)

# the schedules with a formula here (dualpipe_v has none yet: it needs the overlapped
# forward-and-backward time of DeepSeek-V3's DualPipe, not modelled by T_F, T_B, T_W alone)
ESTIMATED = tuple(s for s in SCHEDULES if s != DUALPIPE_V)


def _schedule(name: str) -> str:
    """The canonical name of a schedule that has a formula here (see :data:`ESTIMATED`)."""
    schedule = normalize_schedule(name)
    if schedule not in ESTIMATED:
        raise ValueError(f"no bubble formula for pipeline schedule {schedule!r} yet; "
                         f"choose one of {', '.join(ESTIMATED)}")
    return schedule


def peak_in_flight(schedule: str, p: int, m: int, v: int = 1) -> float:
    """Micro-batches (of L/p layers each) whose activations the first stage holds at once."""
    schedule = _schedule(schedule)
    if schedule == NAIVE:
        return 1.0
    if schedule == GPIPE:
        return float(m)                         # all forwards before any backward
    if schedule == INTERLEAVED_1F1B and v > 1:
        # Megatron warm-up on rank 0: (v−1)·p + 2(p−1) chunk forwards + 1 in steady state,
        # each chunk L/(p·v) layers  ->  p + (p−1)/v stage-micro-batches.
        chunks = min((v - 1) * p + 2 * (p - 1) + 1, v * m)
        return chunks / v
    if schedule == ZB_H2:
        return float(min(2 * p - 1, m))
    return float(min(p, m))                      # 1f1b (= interleaved_1f1b with v=1), zb_h1, zb_v


def pipeline_bubble(schedule: str, p: int, m: int, v: int = 1, t_f: float = 1.0,
                    t_b: float = 1.0, t_w: float = 1.0) -> dict:
    """Bubble of one training step of ``schedule`` with p stages and m micro-batches.

    Times ``t_f``, ``t_b``, ``t_w`` default to equal unit times (the papers' T_F=T_B=T_W).
    Returns ``bubble_time`` (in those units, per device), ``ideal_time`` m·(T_F+T_B+T_W),
    ``bubble_fraction`` (of the whole step), ``bubble_relative`` (to the ideal time) and
    ``peak_in_flight`` micro-batches on the first stage.
    """
    schedule = _schedule(schedule)
    for name, value in (("p", p), ("m", m), ("v", v)):
        if int(value) != value or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    if schedule == INTERLEAVED_1F1B and m % p:
        raise ValueError(f"the interleaved schedule needs micro-batches m ({m}) divisible by p ({p})")
    if schedule == ZB_V and m < 2 * p:
        # the formula below assumes the steady state is reached; warn through the result
        note = f"ZB-V needs m >= 2p ({2 * p}) micro-batches to hide its warm-up; bubble is underestimated"
    else:
        note = ""
    per_mb = t_f + t_b + t_w
    ideal = m * per_mb
    if schedule == NAIVE:
        bubble = (p - 1) * m * per_mb            # only one stage works at any moment
    elif schedule in (GPIPE, ONE_F_ONE_B):
        bubble = (p - 1) * per_mb                # fill + drain of the pipeline
    elif schedule == INTERLEAVED_1F1B:
        bubble = (p - 1) * per_mb / v            # fill + drain in chunks v times smaller
    elif schedule == ZB_H1:
        bubble = (p - 1) * (t_f + t_b - t_w)     # deferred W passes fill the drain
    elif schedule == ZB_H2:
        bubble = (p - 1) * max(0.0, t_f + t_b - 2 * t_w)
    else:                                        # zb_v
        bubble = 0.0
    return {
        "schedule": schedule, "p": p, "m": m, "v": v if schedule == INTERLEAVED_1F1B else 1,
        "bubble_time": bubble, "ideal_time": ideal,
        "bubble_fraction": bubble / (bubble + ideal),
        "bubble_relative": bubble / ideal,
        "peak_in_flight": peak_in_flight(schedule, p, m, v),
        "note": note,
    }
