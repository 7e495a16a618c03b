"""Figures of the context-parallel chapter (:mod:`minidist.parallel.context`): the causal ring's
timeline with contiguous and zigzag chunks, ring against Ulysses over the sequence length, and
the activations each rank keeps."""
from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402

from . import save  # noqa: E402

COLORS = {"ring": "#4C72B0", "ulysses": "#DD8452", "one rank": "#555555"}
STEP_COLORS = ["#4C72B0", "#DD8452", "#55A868", "#C44E52", "#8172B3", "#937860", "#DA8BC3", "#8C8C8C"]


def plot_zigzag_timeline(timelines: list, path, title: str):
    """One panel per layout: each rank's ring-attention compute on the simulated clock, one
    bar per step of the ring (forward plain, backward hatched), coloured by the step; gaps are
    waits for messages. ``timelines``: per rank ``{layout: {"spans": [(start s, duration s,
    backward?), ...], "time": s}}``."""
    layouts = list(timelines[0])
    fig, axes = plt.subplots(len(layouts), 1, figsize=(9, 1.2 + 0.55 * len(timelines) * len(layouts)), sharex=True)
    cp = len(timelines)
    for ax, layout in zip(np.atleast_1d(axes), layouts):
        for r, t in enumerate(timelines):
            for i, (start, dur, backward) in enumerate(t[layout]["spans"]):
                if dur > 0:
                    ax.barh(r, dur * 1e3, left=start * 1e3, height=0.6, color=STEP_COLORS[(i % cp) % len(STEP_COLORS)],
                            edgecolor="white", lw=0.4, hatch="///" if backward else None)
        end = max(t[layout]["time"] for t in timelines)
        ax.axvline(end * 1e3, color="black", lw=1, ls="--")
        ax.set_yticks(range(cp), [f"rank {r}" for r in range(cp)])
        ax.invert_yaxis()
        ax.set_title(f"{layout} chunks: forward and backward end at {end * 1e3:.3f} ms", fontsize=9.5)
        ax.grid(axis="x", alpha=0.3)
    np.atleast_1d(axes)[-1].set_xlabel("simulated time (ms)")
    handles = [Patch(color=STEP_COLORS[s % len(STEP_COLORS)], label=f"ring step {s}") for s in range(cp)]
    handles += [Patch(facecolor="white", edgecolor="gray", hatch="///", label="backward"),
                plt.Line2D([], [], color="black", ls="--", label="last rank done")]
    fig.legend(handles=handles, loc="lower center", fontsize=7.5, ncol=cp + 2)
    fig.suptitle(title, fontsize=10.5)
    return save(fig, path, rect=(0, 0.06, 1, 0.95))


def plot_ring_vs_ulysses(sweep: dict, path, title: str):
    """Left: bytes each rank sends for one layer's attention, forward and backward, against the
    sequence length (markers measured, lines the formula). Right: the simulated time of the
    same, the faster algorithm's region shaded. ``sweep``: {"ring"|"ulysses": {"seq", "bytes",
    "formula", "time"}}."""
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.3))
    for name, r in sweep.items():
        c = COLORS[name]
        left.plot(r["seq"], np.asarray(r["formula"]) / 2**10, "-", color=c, lw=1.2, label=f"{name}: formula")
        left.plot(r["seq"], np.asarray(r["bytes"]) / 2**10, "o", color=c, mfc="none", label=f"{name}: measured")
        right.plot(r["seq"], np.asarray(r["time"]) * 1e3, "o-", color=c, label=name)
    seq = np.asarray(sweep["ring"]["seq"])
    ring_faster = np.asarray(sweep["ring"]["time"]) < np.asarray(sweep["ulysses"]["time"])
    for i, s in enumerate(seq):                  # shade around each point by its winner
        lo = s / 2 ** 0.5 if i == 0 else (seq[i - 1] * s) ** 0.5
        hi = s * 2 ** 0.5 if i == len(seq) - 1 else (seq[i + 1] * s) ** 0.5
        right.axvspan(lo, hi, color=COLORS["ring" if ring_faster[i] else "ulysses"], alpha=0.08, lw=0)
    for ax in (left, right):
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("sequence length s (tokens)")
        ax.grid(alpha=0.3, which="both")
    left.set_ylabel("bytes sent per rank, forward + backward (KiB)")
    left.set_title("traffic: ring 6·(cp − 1)·n, Ulysses 8·(cp − 1)/cp·n elements")
    right.set_ylabel("attention forward + backward (simulated ms)")
    right.set_title("time (shaded: the faster one)")
    left.legend(fontsize=8)
    right.legend(fontsize=8)
    fig.suptitle(title, fontsize=10.5)
    return save(fig, path, rect=(0, 0, 1, 0.94))


def plot_activation_memory(memory: dict, path, one_rank: int):
    """Left: activation bytes per rank against cp at a fixed sequence length, ring and Ulysses
    (markers) beside one rank's bytes ÷ cp (dashed). Right: against the sequence length, one
    rank, ring and Ulysses on all the ranks. ``memory``: {"by_cp": {algorithm: {cp: bytes}},
    "by_seq": {"seq": [...], label: [bytes, ...]}}."""
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.3))
    for name, row in memory["by_cp"].items():
        cps = sorted(row)
        left.plot(cps, row[cps[0]] / np.asarray(cps, float) / 2**10, "-", color=COLORS[name], lw=1,
                  label=f"{name} at cp = 1, ÷ cp")
        left.plot(cps, np.asarray([row[c] for c in cps]) / 2**10, "o", color=COLORS[name], ms=8, mfc="none",
                  label=f"{name}: measured")
    cps = sorted(memory["by_cp"]["ring"])
    left.plot(cps, one_rank / np.asarray(cps, float) / 2**10, "--", color=COLORS["one rank"],
              label="one rank (plain attention) ÷ cp")
    left.set_xscale("log", base=2)
    left.set_xticks(cps, [str(c) for c in cps])
    left.set_xlabel("context-parallel degree cp (ranks)")
    left.set_ylabel("activations kept per rank (KiB)")
    left.set_title("s = 64: every rank keeps 1/cp", fontsize=10)
    seqs = memory["by_seq"]["seq"]
    kept = {"one rank": "s² scores", "ring": "no scores", "ulysses": "s²/cp scores"}
    for label, row in memory["by_seq"].items():
        if label != "seq":
            name = label.split(",")[0]
            right.plot(seqs, np.asarray(row) / 2**10, "o-", color=COLORS[name], label=f"{label} ({kept[name]})")
    right.set_xscale("log", base=2)
    right.set_yscale("log")
    right.set_xlabel("sequence length s (tokens)")
    right.set_ylabel("activations kept per rank (KiB)")
    right.set_title("against the sequence length", fontsize=10)
    for ax in (left, right):
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=7.5)
    fig.suptitle("Activations each rank keeps for backward, tiny GPT (2 layers, n_embd 16, 4 heads)", fontsize=10.5)
    return save(fig, path, rect=(0, 0, 1, 0.94))
