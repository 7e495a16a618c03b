"""Figures of the pipeline chapter: each schedule's planned Gantt chart (its action lists on a
unit-time clock) above the timeline the ranks executed (the simulated clock), and the bubble
as the micro-batches per step grow, theory beside measured.

The inputs are plain data made by :mod:`minidist.demo.pipeline`: a box is
``(rank, op, micro_batch, chunk, start, end)``.
"""
from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402
from matplotlib.ticker import FixedLocator, NullFormatter, PercentFormatter  # noqa: E402

from ..defaults import (DUALPIPE_V, GPIPE, INTERLEAVED_1F1B, NAIVE, ONE_F_ONE_B, ZB_H1, ZB_H2,  # noqa: E402
                        ZB_V)
from . import save  # noqa: E402

OP_COLORS = {"F": "#4C72B0", "B": "#DD8452", "W": "#55A868"}
OP_LABELS = {"F": "F: forward", "B": "B: backward (its input-gradient half where W is split)",
             "W": "W: weight-gradient half"}
SCHEDULE_STYLE = {     # colour, marker: schedules with equal theory still tell apart
    NAIVE: ("#8C8C8C", "o"), GPIPE: ("#4C72B0", "s"), ONE_F_ONE_B: ("#64B5CD", "D"),
    INTERLEAVED_1F1B: ("#8172B3", "^"), ZB_H1: ("#DD8452", "v"), ZB_H2: ("#C44E52", "P"),
    ZB_V: ("#55A868", "X"), DUALPIPE_V: ("#937860", "*")}


def _gantt(ax, boxes: list, p: int, chunks: int, xlabel: str, title: str) -> None:
    """One Gantt chart: a row per rank (rank 0 on top), a box per action with its micro-batch."""
    groups: dict = {}                                 # one collection per (rank, op, chunk kind): fast to draw
    for rank, op, mb, chunk, start, end in boxes:
        second = chunks > 1 and chunk >= p            # the rank's later chunk(s) of the model
        groups.setdefault((rank, op, second), []).append((start, end - start))
        ax.text((start + end) / 2, rank, str(mb), ha="center", va="center", fontsize=7, color="white")
    for (rank, op, second), spans in groups.items():
        ax.broken_barh(spans, (rank - 0.4, 0.8), facecolors=OP_COLORS[op], edgecolor="white", linewidth=0.4,
                       hatch="//" if second else None)
    ax.set_yticks(range(p), [f"rank {r}" for r in range(p)], fontsize=7)
    ax.set_ylim(p - 0.5, -0.5)
    ax.set_xlim(0, max(b[5] for b in boxes))
    ax.set_xlabel(xlabel, fontsize=7)
    ax.tick_params(axis="x", labelsize=7)
    ax.set_title(title, fontsize=8.5, loc="left")


def plot_schedules(rows: list, p: int, path) -> None:
    """For every schedule, the planned chart (``row["planned"]``, stage units) above the executed
    one (``row["executed"]``, ms). ``rows``: the chapter's table rows, one per schedule."""
    cols = 2
    pairs = (len(rows) + cols - 1) // cols
    fig, axes = plt.subplots(2 * pairs, cols, figsize=(10 * cols, 0.6 * (p + 1.5) * 2 * pairs), squeeze=False)
    for k, r in enumerate(rows):
        top, bottom = axes[2 * (k // cols), k % cols], axes[2 * (k // cols) + 1, k % cols]
        chunks = 1 + max(b[3] for b in r["planned"]) // p
        _gantt(top, r["planned"], p, chunks, "time (unit: one F, B or W of a stage of L/p layers; a chunk's pass "
                                             "takes 1/chunks of it)",
               f"{r['schedule']} — planned: the schedule's data, F = B = W = 1 per stage; step "
               f"{max(b[5] for b in r['planned']):g} units, bubble {r['bubble_theory']:.1%}")
        _gantt(bottom, r["executed"], p, chunks, "simulated time (ms)",
               f"{r['schedule']} — executed on the simulated clock; bubble {r['bubble_measured']:.1%}, "
               f"step {r['step_ms']:.1f} ms")
    for k in range(len(rows), pairs * cols):           # an odd number of schedules: one pair left empty
        axes[2 * (k // cols), k % cols].set_visible(False)
        axes[2 * (k // cols) + 1, k % cols].set_visible(False)
    handles = [Patch(color=c, label=OP_LABELS[op]) for op, c in OP_COLORS.items()]
    handles.append(Patch(facecolor="#BBBBBB", hatch="//", edgecolor="white", label="the rank's second chunk"))
    fig.legend(handles=handles, loc="lower center", ncol=4, fontsize=9)
    m = rows[0]["m"]
    fig.suptitle(f"Pipeline schedules on {p} ranks, {m} micro-batches (numbers in the boxes): planned above "
                 f"executed; white space is the bubble", fontsize=12)
    # fixed margins: tight_layout would measure each of the ~2,000 box labels (and draw twice)
    fig.subplots_adjust(left=0.04, right=0.99, bottom=0.06, top=0.95, hspace=0.55, wspace=0.07)
    save(fig, path, dpi=100, tight=False)


def plot_bubble_vs_microbatches(sweep: list, p: int, path) -> None:
    """Bubble fraction against micro-batches per step: the estimator's theory (lines) and the
    simulated clock's measurement (markers), per schedule. ``sweep``: rows with ``schedule``,
    ``m``, ``bubble_theory``, ``bubble_measured``."""
    fig, ax = plt.subplots(figsize=(10, 5))
    for name, (color, marker) in SCHEDULE_STYLE.items():
        pts = sorted((r["m"], r["bubble_theory"], r["bubble_measured"]) for r in sweep if r["schedule"] == name)
        if not pts:
            continue
        ms, theory, measured = zip(*pts)
        ax.plot(ms, theory, "-", color=color, lw=1.2, alpha=0.8)
        ax.plot(ms, measured, marker, color=color, ms=7, ls="none", label=name)
    ax.set_yscale("log")
    ax.yaxis.set_major_locator(FixedLocator([0.02, 0.03, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75]))
    ax.yaxis.set_major_formatter(PercentFormatter(1.0, decimals=0))
    ax.yaxis.set_minor_formatter(NullFormatter())
    ax.set_xticks(sorted({r["m"] for r in sweep}))
    ax.set_xlabel("micro-batches per step m (gradient_accumulation_steps)")
    ax.set_ylabel("bubble: idle share of the step (log scale)")
    ax.set_title(f"Pipeline bubble vs micro-batches on {p} ranks: theory and measured")
    style = [Line2D([], [], color="k", lw=1.2, label="theory (estimator, T_F = T_B = T_W)"),
             Line2D([], [], color="k", marker="o", ls="none", label="measured (simulated clock)")]
    first = ax.legend(handles=style, loc="lower left", fontsize=8)
    ax.add_artist(first)
    ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize=8, title="schedule")
    ax.grid(True, which="both", alpha=0.3)
    save(fig, path)
