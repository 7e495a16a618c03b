"""Figures for the collectives chapter: what each operator does, ring all-reduce step by
step, and how the algorithms compare in bytes and simulated time.

Every function takes measured or computed data (nothing is typed in) and a path, writes a
PNG and returns the path.
"""
from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402
from . import save  # noqa: E402

RANK_COLORS = ["#4C72B0", "#DD8452", "#55A868", "#C44E52", "#8172B3", "#937860", "#DA8BC3", "#8C8C8C"]


def _operators(p: int) -> dict:
    """Before/after content of each rank for the five operators of the source notes.

    A cell is (text, contributing ranks); a rank holds a list of cells (its chunks).
    """
    full = frozenset(range(p))
    own = [[(f"x{r}", frozenset([r]))] for r in range(p)]
    chunks = [[(f"x{r}[{j}]", frozenset([r])) for j in range(p)] for r in range(p)]
    empty = [[] for _ in range(p)]
    return {
        "broadcast (root 0)": ([[("x0", frozenset([0]))]] + empty[1:],
                               [[("x0", frozenset([0]))] for _ in range(p)]),
        "reduce (root 0)": (own, [[("Σx", full)]] + empty[1:]),
        "all-reduce": (own, [[("Σx", full)] for _ in range(p)]),
        "reduce-scatter": (chunks, [[(f"Σx[{r}]", full)] for r in range(p)]),
        "all-gather": (own, [[(f"x{j}", frozenset([j])) for j in range(p)] for _ in range(p)]),
    }


def _draw_cell(ax, x, y, w, h, text, ranks, p):
    """A box filled with one stripe per contributing rank (colour = rank)."""
    ranks = sorted(ranks)
    for i, r in enumerate(ranks):
        ax.add_patch(plt.Rectangle((x + w * i / len(ranks), y), w / len(ranks), h,
                                   color=RANK_COLORS[r % len(RANK_COLORS)], alpha=0.75, lw=0))
    ax.add_patch(plt.Rectangle((x, y), w, h, fill=False, ec="k", lw=0.8))
    ax.text(x + w / 2, y + h / 2, text, ha="center", va="center", fontsize=8)


def plot_collective_operators(path, p: int = 4):
    """The five operators as data movement: each rank's buffers before and after."""
    ops = _operators(p)
    fig, axes = plt.subplots(len(ops), 2, figsize=(10, 2.0 * len(ops)))
    for row, (name, (before, after)) in enumerate(ops.items()):
        for col, (state, when) in enumerate(((before, "before"), (after, "after"))):
            ax = axes[row, col]
            for r in range(p):
                for j, (text, ranks) in enumerate(state[r]):
                    _draw_cell(ax, r * 1.2, (p - 1 - j) * 0.5, 1.0, 0.42, text, ranks, p)
                ax.text(r * 1.2 + 0.5, -0.25, f"rank {r}", ha="center", va="top", fontsize=8)
            ax.set_xlim(-0.1, p * 1.2)
            ax.set_ylim(-0.55, p * 0.5)
            ax.axis("off")
            ax.set_title(f"{name} — {when}", fontsize=10)
    handles = [Patch(color=RANK_COLORS[r], alpha=0.75, label=f"data from rank {r}") for r in range(p)]
    fig.legend(handles=handles, loc="lower center", ncol=p, fontsize=8)
    fig.suptitle("Collective operators as data movement (stripes: whose data a buffer contains)")
    return save(fig, path, rect=(0, 0.04, 1, 0.97))


def plot_ring_allreduce(frames, path):
    """Ring all-reduce step by step: which contributions each chunk holds on each rank.

    ``frames`` is :func:`minidist.distributed.all_reduce.ring_states` (rank × chunk sets).
    """
    n = len(frames)
    p = len(frames[0][1])
    cols = min(n, 4)
    rows = -(-n // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.3 * cols, 3.0 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for k, (label, state) in enumerate(frames):
        ax = axes.flat[k]
        for r in range(p):
            for j in range(p):
                ranks = state[r][j]
                text = "Σ" if len(ranks) == p else "+".join(map(str, sorted(ranks)))
                _draw_cell(ax, r * 1.1, (p - 1 - j) * 0.6, 1.0, 0.5, text, ranks, p)
            ax.text(r * 1.1 + 0.5, -0.15, f"rank {r}", ha="center", va="top", fontsize=7)
        for j in range(p):
            ax.text(-0.1, (p - 1 - j) * 0.6 + 0.25, f"chunk {j}", ha="right", va="center", fontsize=7)
        ax.set_xlim(-0.9, p * 1.1)
        ax.set_ylim(-0.5, p * 0.6)
        ax.set_title(label, fontsize=9)
    fig.suptitle(f"Ring all-reduce on {p} ranks: reduce-scatter then all-gather "
                 f"(cell text: ranks summed in; Σ = all {p})")
    return save(fig, path, rect=(0, 0, 1, 0.95))


def plot_algorithm_times(size_rows, size_p, world_rows, world_nbytes, path, model=None, crossover=None):
    """Simulated time of all-reduce algorithms vs message size and vs world size.

    ``size_rows``/``world_rows``: dicts with ``algorithm``, ``nbytes``, ``p``, ``seconds``
    (measured on the simulated clock). ``model``: optional {algorithm: (sizes, seconds)}
    α-β predictions drawn dashed; ``crossover``: bytes where ring overtakes recursive doubling.
    """
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(12, 4.5))
    algos = sorted({r["algorithm"] for r in size_rows})
    for i, alg in enumerate(algos):
        color = RANK_COLORS[i % len(RANK_COLORS)]
        rows = sorted((r for r in size_rows if r["algorithm"] == alg), key=lambda r: r["nbytes"])
        a1.loglog([r["nbytes"] for r in rows], [r["seconds"] * 1e6 for r in rows], "o-", color=color, label=alg)
        if model and alg in model:
            xs, ys = model[alg]
            a1.loglog(xs, np.asarray(ys) * 1e6, "--", color=color, lw=0.8)
        rows = sorted((r for r in world_rows if r["algorithm"] == alg), key=lambda r: r["p"])
        a2.plot([r["p"] for r in rows], [r["seconds"] * 1e6 for r in rows], "o-", color=color, label=alg)
    if crossover:
        a1.axvline(crossover, color="k", ls=":", lw=1)
        a1.text(crossover, a1.get_ylim()[1], f" crossover\n ≈{crossover / 1024:.0f} KiB", va="top", fontsize=8)
    a1.set_xlabel("message size n (bytes)")
    a1.set_ylabel("simulated time (µs)")
    a1.set_title(f"all-reduce on {size_p} ranks: latency-bound left, bandwidth-bound right\n"
                 "(dots: simulated; dashed: α-β model)", fontsize=10)
    a1.legend(fontsize=8)
    a2.set_xticks(sorted({r["p"] for r in world_rows}))
    a2.set_xlabel("world size p (ranks)")
    a2.set_ylabel("simulated time (µs)")
    a2.set_title(f"all-reduce of {world_nbytes / 2**20:.0f} MiB as the world grows", fontsize=10)
    a2.legend(fontsize=8)
    for ax in (a1, a2):
        ax.grid(True, which="both", alpha=0.3)
    return save(fig, path)


def plot_bytes_per_rank(rows, path, title="Bytes sent by the busiest rank: message log vs textbook"):
    """Grouped bars: bytes sent per rank measured from the log next to the textbook formula.

    ``rows``: dicts with ``label`` (e.g. "all_reduce[ring]"), ``measured``, ``textbook``, ``formula``.
    """
    fig, ax = plt.subplots(figsize=(max(7, 0.9 * len(rows)), 4.5))
    x = np.arange(len(rows))
    ax.bar(x - 0.2, [r["measured"] / 2**20 for r in rows], 0.4, label="measured (message log)", color="#4C72B0")
    ax.bar(x + 0.2, [r["textbook"] / 2**20 for r in rows], 0.4, label="textbook formula", color="#DD8452")
    for i, r in enumerate(rows):
        ax.text(i, max(r["measured"], r["textbook"]) / 2**20, r["formula"], ha="center", va="bottom", fontsize=7)
    ax.set_xticks(x, [r["label"] for r in rows], rotation=30, ha="right", fontsize=8)
    ax.set_ylabel("bytes sent per rank (MiB)")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8)
    return save(fig, path)


def plot_message_timeline(sends, path, title="Messages on the simulated comm streams"):
    """One row per rank, one bar per message sent, from its start to its arrival (µs).

    ``sends[r]``: rows ``(t_start, t_end, step)`` of rank r's sends, from its message log.
    """
    fig, ax = plt.subplots(figsize=(10, 0.6 * len(sends) + 1.5))
    steps = sorted({int(row[2]) for rows in sends for row in rows})
    for r, rows in enumerate(sends):
        for t0, t1, step in rows:
            ax.barh(r, (t1 - t0) * 1e6, left=t0 * 1e6, height=0.6,
                    color=RANK_COLORS[int(step) % len(RANK_COLORS)], ec="k", lw=0.3)
    ax.set_yticks(range(len(sends)), [f"rank {r}" for r in range(len(sends))])
    ax.invert_yaxis()
    ax.set_xlabel("simulated time (µs)")
    ax.set_title(title, fontsize=10)
    handles = [Patch(color=RANK_COLORS[s % len(RANK_COLORS)], label=f"step {s}") for s in steps[:8]]
    ax.legend(handles=handles, fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1))
    return save(fig, path)
