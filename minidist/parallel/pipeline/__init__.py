"""minidist.parallel.pipeline: pipeline parallelism, every schedule as data, one executor.

Read in this order:

======================  ===================================================================
module                  what a student finds there
======================  ===================================================================
:mod:`.schedule`        ``Action(op, micro_batch, stage)``, ``Schedule``, the validator and
                        the unit-time simulator (bubble, peak in flight) — no ranks needed
:mod:`.gantt`           ``print(schedule)``: a text Gantt chart
:mod:`.fill_drain`      ``naive`` and ``gpipe`` (Huang et al. 2019)
:mod:`.one_f_one_b`     ``1f1b``, PipeDream-Flush (Narayanan et al. 2021)
:mod:`.interleaved`     ``interleaved_1f1b``, Megatron's virtual pipeline (Narayanan et al. 2021)
:mod:`.zero_bubble`     ``zb_h1``, ``zb_h2``: B/W split (Qi et al. 2023)
:mod:`.v_schedules`     ``zb_v`` (built for the pass times) and ``dualpipe_v``: two chunks per rank in a V
:mod:`.stage`           the GPT cut into chunks: embedding first, blocks evenly, ln_f + tied head last
:mod:`.executor`        runs any schedule on the ranks of ``grid.pp`` with send/recv
:mod:`.overlap`         DualPipe's F&B pair: a forward and a backward run together, one's
                        communication under the other's compute (``parallel.overlap_f_b``)
:mod:`.engine`          the pipelined training step: tied embedding, DP/ZeRO over ``grid.dp``
======================  ===================================================================

::

    from minidist.parallel.pipeline import build_schedule
    s = build_schedule("1f1b", ranks=4, micro_batches=8)
    s.actions[0][:3]      # [Action(op='F', micro_batch=0, stage=0), …]
    print(s)              # Gantt chart with F = B = W = 1 per stage of L/p layers
    build_schedule("zb_v", 4, 8, times=(1, 2, 1))   # ZB-V for a backward twice the forward
"""
from __future__ import annotations

import numpy as np

from ...defaults import (DUALPIPE_V, GPIPE, INTERLEAVED_1F1B, NAIVE, ONE_F_ONE_B, SCHEDULES, ZB_H1, ZB_H2, ZB_V,
                         normalize_schedule)
from .fill_drain import gpipe, naive
from .interleaved import interleaved_1f1b
from .one_f_one_b import one_f_one_b
from .schedule import Action, OverlapFB, Schedule, ScheduleError, Timeline, replay, simulate, validate
from .v_schedules import EQUAL_TIMES, check_times, dualpipe_v, zb_v
from .zero_bubble import zb_h1, zb_h2

BUILDERS = {NAIVE: naive, GPIPE: gpipe, ONE_F_ONE_B: one_f_one_b, INTERLEAVED_1F1B: interleaved_1f1b,
            ZB_H1: zb_h1, ZB_H2: zb_h2, ZB_V: zb_v, DUALPIPE_V: dualpipe_v}
V_SCHEDULES = (ZB_V, DUALPIPE_V)          # two chunks per rank in a V
assert set(BUILDERS) == set(SCHEDULES)


def build_schedule(name: str, ranks: int, micro_batches: int, virtual_stages: int = 1,
                   times=None) -> Schedule:
    """The schedule ``name`` (canonical or a torch.distributed.pipelining alias) for ``ranks``
    pipeline ranks and ``micro_batches`` micro-batches; ``virtual_stages`` chunks per rank for
    ``interleaved_1f1b`` (the V schedules always have 2, the others 1). ``times``: the pass
    times (T_F, T_B, T_W) of one stage, equal when None; only ``zb_v``'s order depends on
    them (the others are fixed orders), and the schedule keeps them for its Gantt chart."""
    canonical = normalize_schedule(name)
    # NumPy integers (a sweep over np.arange) as Python ints: the actions and their JSON hold ints
    ranks, micro_batches, virtual_stages = (int(v) if isinstance(v, np.integer) else v
                                            for v in (ranks, micro_batches, virtual_stages))
    times = EQUAL_TIMES if times is None else check_times(canonical, times)
    if canonical == INTERLEAVED_1F1B:
        s = interleaved_1f1b(ranks, micro_batches, virtual_stages)
    else:
        fixed = chunks_per_rank(canonical)
        if virtual_stages not in (1, fixed):
            raise ValueError(f"schedule {canonical!r} has {fixed} chunk(s) per rank; parallel.virtual_stages="
                             f"{virtual_stages} applies to {INTERLEAVED_1F1B!r} only")
        s = zb_v(ranks, micro_batches, times) if canonical == ZB_V else BUILDERS[canonical](ranks, micro_batches)
    s.times = times
    return s


def config_problem(cfg: dict):
    """What is wrong with a config's pipeline settings, as (key, message), or None."""
    par = cfg["parallel"]
    pp, m = par["pipeline"], cfg["gradient_accumulation_steps"]
    if par.get("overlap_f_b") and (pp == 1 or normalize_schedule(par["schedule"]) != DUALPIPE_V):
        return ("parallel.overlap_f_b", f"overlaps the forward/backward pairs of schedule {DUALPIPE_V!r} "
                                        f"(DualPipe); set parallel.schedule {DUALPIPE_V!r} with parallel.pipeline "
                                        f"> 1, or overlap_f_b false")
    if par.get("overlap_f_b") and cfg["zero_optimization"]["stage"] == 3:
        return ("parallel.overlap_f_b", "ZeRO-3 gathers and releases a chunk's parameters around each action, and the "
                                        "two lanes of an overlapped pair would release what the other still uses; set "
                                        "overlap_f_b false, or zero_optimization.stage 1 or 2")
    if pp == 1:
        return None
    try:
        s = build_schedule(par["schedule"], pp, m, par["virtual_stages"], times=par["pass_times"])
    except ValueError as e:
        text = str(e)
        key = ("parallel.virtual_stages" if "virtual_stages" in text else
               "parallel.pass_times" if "pass times" in text else
               "parallel.schedule" if "pipeline schedule" in text else "gradient_accumulation_steps")
        return (key, text)
    n_layer = cfg["model"]["n_layer"]
    if n_layer % s.n_stages:
        return ("model.n_layer", f"{n_layer} layers do not split evenly into {s.n_stages} pipeline chunks "
                                 f"({pp} ranks × {s.virtual_stages} chunk(s) per rank for {s.name!r}); use a "
                                 f"multiple of {s.n_stages}")
    return None


def chunks_per_rank(name: str, virtual_stages: int = 1) -> int:
    """How many model chunks each rank holds under schedule ``name``."""
    canonical = normalize_schedule(name)
    if canonical == INTERLEAVED_1F1B:
        return virtual_stages
    return 2 if canonical in V_SCHEDULES else 1


__all__ = ["Action", "BUILDERS", "OverlapFB", "SCHEDULES", "Schedule", "ScheduleError", "Timeline", "build_schedule",
           "chunks_per_rank", "config_problem", "replay", "simulate", "validate"]
