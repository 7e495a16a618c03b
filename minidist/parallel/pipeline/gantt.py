"""``print(schedule)``: a text Gantt chart, one row per rank, one cell per unit of time.

The chart comes from :func:`~.schedule.simulate` with F = B = W = 1 (a whole backward, a
``B`` with no ``W``, takes two cells). Cells read ``F3`` (forward of micro-batch 3), ``B3``,
``W3``; with several chunks per rank the chunk follows a colon (``F3:5`` = chunk 5). A dot is
an idle unit — the bubble.
"""
from __future__ import annotations

from .schedule import Schedule, ScheduleError, simulate


def cell_label(action, chunks_per_rank: int) -> str:
    label = f"{action.op}{action.micro_batch}"
    return f"{label}:{action.stage}" if chunks_per_rank > 1 else label


def text_gantt(s: Schedule) -> str:
    chunks = s.virtual_stages
    head = (f"{s.name}: {s.ranks} ranks, {s.micro_batches} micro-batches, {s.n_stages} chunks "
            f"(stage_to_rank {s.stage_to_rank})")
    try:
        tl = simulate(s)
    except ScheduleError as e:                      # show the program even if it cannot run
        rows = [f"rank {r}: " + " ".join(str(a) for a in acts) for r, acts in enumerate(s.actions)]
        return "\n".join([head, f"(cannot be simulated: {e})", *rows])
    width = max(len(cell_label(a, chunks)) for acts in s.actions for a in acts)
    slots = int(round(tl.step_time))
    rows = []
    for r, events in enumerate(tl.events):
        cells = ["."] * slots
        for a, start, end in events:
            for t in range(int(round(start)), int(round(end))):
                cells[t] = cell_label(a, chunks) if t == int(round(start)) else "~"
        rows.append(f"rank {r} |" + " ".join(c.ljust(width) for c in cells) + "|")
    foot = (f"bubble {tl.bubble_fraction:.3f} (F=B=W=1, step {tl.step_time:g} units); peak in flight "
            f"{[round(x, 2) for x in tl.peak_in_flight]}")
    return "\n".join([head, *rows, foot])
