"""``print(schedule)``: a text Gantt chart, one row per rank, drawn to scale.

The chart comes from :func:`~.schedule.simulate` with the pass times the schedule was built
for (F = B = W = 1 per stage of L/p layers unless given). Time is cut into cells small
enough that every pass is a whole number of them: with v chunks per rank a chunk's pass is
1/v of a stage's, so a ZB-V chart (two chunks per rank) has two cells per unit of time and
a ZB-H1 chart one — the footer says how long a cell is, and the step in units. A pass
starts with its label — ``F3`` (forward of micro-batch 3), ``B3``, ``W3``; with several
chunks per rank the chunk follows a colon (``F3:5`` = chunk 5) — and ``~`` continues it; a
dot is an idle cell, the bubble.
"""
from __future__ import annotations

from fractions import Fraction

from .schedule import Schedule, ScheduleError, simulate


def cell_label(action, chunks_per_rank: int) -> str:
    label = f"{action.op}{action.micro_batch}"
    return f"{label}:{action.stage}" if chunks_per_rank > 1 else label


def cells_per_unit(s: Schedule) -> int:
    """The fewest cells per unit of time that make every pass of ``s`` a whole number of cells."""
    chunks = s.virtual_stages
    durations = [Fraction(t).limit_denominator(1000) / chunks for t in s.times]
    durations.append(sum(durations[1:]))                 # an unsplit backward, B + W
    q = 1
    for d in durations:
        q = q * d.denominator // _gcd(q, d.denominator)
    return q


def _gcd(a: int, b: int) -> int:
    while b:
        a, b = b, a % b
    return a


def text_gantt(s: Schedule) -> str:
    chunks = s.virtual_stages
    head = (f"{s.name}: {s.ranks} ranks, {s.micro_batches} micro-batches, {s.n_stages} chunks "
            f"(stage_to_rank {s.stage_to_rank})")
    try:
        tl = simulate(s, *s.times)
    except ScheduleError as e:                      # show the program even if it cannot run
        rows = [f"rank {r}: " + " ".join(str(a) for a in acts) for r, acts in enumerate(s.actions)]
        return "\n".join([head, f"(cannot be simulated: {e})", *rows])
    q = cells_per_unit(s)
    width = max(len(cell_label(a, chunks)) for acts in s.actions for a in acts)
    slots = int(round(tl.step_time * q))
    rows = []
    for r, events in enumerate(tl.events):
        cells = ["."] * slots
        for a, start, end in events:
            first = int(round(start * q))
            for t in range(first, int(round(end * q))):
                cells[t] = cell_label(a, chunks) if t == first else "~"
        rows.append(f"rank {r} |" + " ".join(c.ljust(width) for c in cells) + "|")
    times = "F = B = W = 1" if tuple(s.times) == (1.0, 1.0, 1.0) else "F, B, W = {:g}, {:g}, {:g}".format(*s.times)
    cell = "1 unit" if q == 1 else f"1/{q} unit"
    foot = (f"step {tl.step_time:g} units ({times} per stage of L/p layers; a cell is {cell}); bubble "
            f"{tl.bubble_fraction:.3f}; peak in flight {[round(x, 2) for x in tl.peak_in_flight]}")
    return "\n".join([head, *rows, foot])
