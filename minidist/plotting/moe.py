"""Figures of the mixture-of-experts chapter (:mod:`minidist.moe`, :mod:`minidist.parallel.expert`):
one group's routing against capacity, the all-to-alls on a rank's clock, load balance with and
without the auxiliary loss, and DualPipeV's overlapped F&B pair."""
from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402

from . import save  # noqa: E402

EXPERT_COLORS = ["#4C72B0", "#DD8452", "#55A868", "#C44E52", "#8172B3", "#937860", "#DA8BC3", "#8C8C8C"]
LANE_COLORS = ("#4C72B0", "#DD8452")           # forward, backward
COMM_COLOR, A2A_COLOR = "#999999", "#C44E52"


def plot_routing(routing: dict, path, title: str):
    """Left: the assignments each expert received (before capacity) and kept, at each capacity
    factor, with its capacity C as a line. Right: assignments dropped against the capacity factor.
    ``routing``: {"tokens", "k", "rows": [{"capacity_factor", "capacity", "load", "kept", "dropped"}]}."""
    rows = routing["rows"]
    E = len(rows[0]["load"])
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.3), gridspec_kw={"width_ratios": [1.6, 1]})
    width = 0.8 / len(rows)
    x = np.arange(E)
    left.bar(x, rows[0]["load"], width=0.85, color="#DDDDDD", edgecolor="gray", label="assignments (before capacity)")
    for i, r in enumerate(rows):
        pos = x - 0.4 + width * (i + 0.5)
        left.bar(pos, r["kept"], width=width * 0.9, color=EXPERT_COLORS[i], label=f"kept, capacity factor "
                                                                                   f"{r['capacity_factor']:g}")
        left.hlines(r["capacity"], pos[0] - width / 2, pos[-1] + width / 2, color=EXPERT_COLORS[i], ls="--", lw=1)
    left.set_xticks(x, [f"expert {e}" for e in range(E)])
    left.set_ylabel("assignments (tokens × choices)")
    left.set_title("load per expert; dashed: capacity C = ⌈factor · T · k / E⌉", fontsize=9.5)
    left.legend(fontsize=7.5)
    cf = [r["capacity_factor"] for r in rows]
    total = routing["tokens"] * routing["k"]
    right.plot(cf, [100 * r["dropped"] / total for r in rows], "o-", color="#C44E52")
    for r in rows:
        right.annotate(f"C = {r['capacity']}", (r["capacity_factor"], 100 * r["dropped"] / total),
                       textcoords="offset points", xytext=(4, 6), fontsize=8)
    right.set_xlabel("capacity factor")
    right.set_ylabel(f"assignments dropped (% of T·k = {total})")
    right.set_title("dropped: the residual carries them on", fontsize=9.5)
    for ax in (left, right):
        ax.grid(alpha=0.3, axis="y")
    fig.suptitle(title, fontsize=10.5)
    return save(fig, path, rect=(0, 0, 1, 0.94))


def plot_all_to_all_timeline(a2a: dict, path, title: str):
    """Rank 0's compute and comm streams over one training step, the all-to-alls highlighted.
    ``a2a``: {"spans": [(start s, duration s, stream, name)], "a2a_time", "step", "bytes", "formula"}."""
    fig, ax = plt.subplots(figsize=(11, 3.2))
    for start, dur, stream, name in a2a["spans"]:
        row = 1 if stream == "compute" else 0
        color = LANE_COLORS[0] if stream == "compute" else (A2A_COLOR if name.startswith("all_to_all") else COMM_COLOR)
        ax.barh(row, dur * 1e6, left=start * 1e6, height=0.6, color=color, lw=0)
    ax.set_yticks([0, 1], ["comm stream", "compute stream"])
    ax.set_xlabel("simulated time (µs)")
    ax.set_title(f"{a2a['count']} all-to-alls ({a2a['bytes'][0]} B each, formula {a2a['formula']} B): "
                 f"{a2a['a2a_time'] * 1e6:.1f} µs of a {a2a['step'] * 1e6:.1f} µs step", fontsize=9.5)
    ax.grid(axis="x", alpha=0.3)
    fig.legend(handles=[Patch(color=LANE_COLORS[0], label="compute"), Patch(color=A2A_COLOR, label="all-to-all "
                        "(dispatch, combine; forward and backward)"),
                        Patch(color=COMM_COLOR, label="other collectives (the gradients' all-reduce)")],
               fontsize=8, loc="lower center", ncol=3)
    fig.suptitle(title, fontsize=10.5)
    return save(fig, path, rect=(0, 0.1, 1, 0.92))


def plot_load_balance(runs: dict, path, last: int, title: str):
    """Per training step, the busiest expert's load over the mean (left) and the assignments
    dropped (right), one line per aux_loss_coef. ``runs``: {coef: {"imbalance", "dropped", "tokens"}}."""
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    for i, (coef, r) in enumerate(runs.items()):
        steps = np.arange(len(r["imbalance"]))
        label = f"aux_loss_coef {coef:g}"
        left.plot(steps, r["imbalance"], "-", color=EXPERT_COLORS[i], label=label)
        right.plot(steps, r["dropped"], "-", color=EXPERT_COLORS[i], label=label)
    for ax in (left, right):
        ax.axvspan(len(next(iter(runs.values()))["imbalance"]) - last - 0.5,
                   len(next(iter(runs.values()))["imbalance"]) - 0.5, color="gray", alpha=0.1,
                   label=f"last {last} steps (the table)")
        ax.set_xlabel("training step")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    tokens = next(iter(runs.values()))["tokens"]
    left.axhline(1.0, color="black", lw=0.8, ls=":")
    left.set_ylabel("busiest expert's load / mean load")
    left.set_title("1 = perfectly balanced; E = every token on one expert (top-1)", fontsize=9.5)
    right.set_ylabel(f"assignments dropped (of {tokens})")
    right.set_title("capacity drops what the busiest experts cannot take", fontsize=9.5)
    fig.suptitle(title, fontsize=10.5)
    return save(fig, path, rect=(0, 0, 1, 0.94))


def plot_dualpipe_overlap(fig_data: dict, summary: dict, path, title: str):
    """One F&B pair on rank 0, top: run as F then B (overlap off), bottom: overlapped; each with a
    compute and a comm row, coloured by the pass (forward, backward). ``fig_data``: {"sequential",
    "overlapped": [(lane, "compute"|"comm", start s, end s)], "seq_t0", "seq_t1", "t0", "t1"}."""
    fig, axes = plt.subplots(2, 1, figsize=(10, 4.2), sharex=True)
    panels = (("F then B (overlap_f_b false)", fig_data["sequential"], fig_data["seq_t0"], fig_data["seq_t1"]),
              ("F&B overlapped (overlap_f_b true)", fig_data["overlapped"], fig_data["t0"], fig_data["t1"]))
    for ax, (name, spans, t0, t1) in zip(axes, panels):
        for lane, kind, s, e in spans:
            row = 1 if kind == "compute" else 0
            ax.barh(row, (e - s) * 1e6, left=(s - t0) * 1e6, height=0.6, color=LANE_COLORS[lane],
                    alpha=1.0 if kind == "compute" else 0.55, lw=0)
        ax.axvline((t1 - t0) * 1e6, color="black", ls="--", lw=1)
        ax.set_yticks([0, 1], ["comm", "compute"])
        ax.set_title(f"{name}: {(t1 - t0) * 1e6:.1f} µs", fontsize=9.5)
        ax.grid(axis="x", alpha=0.3)
    axes[-1].set_xlabel("simulated time from the pair's start (µs)")
    fig.legend(handles=[Patch(color=LANE_COLORS[0], label="forward (its all-to-alls paler)"),
                        Patch(color=LANE_COLORS[1], label="backward (its all-to-alls paler)"),
                        plt.Line2D([], [], color="black", ls="--", label="pair done")],
               loc="lower center", ncol=3, fontsize=8)
    fig.suptitle(f"{title}\nwhole step: {summary['step_off'] * 1e6:.1f} µs → {summary['step_on'] * 1e6:.1f} µs; "
                 f"the pairs hid {summary['hidden'] * 1e6:.1f} µs", fontsize=10)
    return save(fig, path, rect=(0, 0.07, 1, 0.93))
