"""Figures of the generation chapter: KV-cache bytes against the context, FLOPs per generated
token with and without the cache, and the prefill/decode timeline (:mod:`minidist.inference`)."""
from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402

from . import save  # noqa: E402

COLORS = ["#4C72B0", "#DD8452", "#55A868", "#C44E52", "#8172B3", "#937860"]
MARKERS = ["o", "s", "^", "D", "v", "P"]
STYLES = ["-", "--", "-.", ":", "-", "--"]
PHASE_COLORS = {"prefill": "#C44E52", "decode": "#4C72B0"}


def _measured_and_formula(ax, rows: dict, scale: float) -> None:
    """Each run: its formula as a line, its measurements as markers (distinct per run, so
    that runs with equal values stay visible)."""
    for i, (label, r) in enumerate(rows.items()):
        c = COLORS[i % len(COLORS)]
        ax.plot(r["context"], np.asarray(r["formula"]) / scale, STYLES[i % len(STYLES)], color=c, lw=1.2,
                label=f"{label}: formula")
        ax.plot(r["context"], np.asarray(r["measured"]) / scale, MARKERS[i % len(MARKERS)], color=c, ms=5 - 0.6 * i,
                mfc="none" if i % 2 else c, label=f"{label}: measured")


def plot_kv_cache_bytes(rows: dict, path, title="KV-cache bytes held against the context length"):
    """One line per run: bytes held under ``kv_cache`` after each generation step (markers,
    measured) and 2·n_layer·n_embd·w·L (line). ``rows``: {label: {"context": [...],
    "measured": [...], "formula": [...]}}."""
    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    _measured_and_formula(ax, rows, 2**10)
    ax.set_xlabel("context length L (positions cached)")
    ax.set_ylabel("KV cache held per rank (KiB)")
    ax.set_title(title)
    ax.legend(fontsize=7.5, ncol=2)
    ax.grid(alpha=0.3)
    return save(fig, path)


def plot_flops_per_token(rows: dict, path, floor: float | None = None, floor_label: str = "",
                         cached: str | None = None,
                         title="Matmul FLOPs per generated token, with and without the KV cache"):
    """Left: measured matmul FLOPs of each step (markers) beside the formula (line), every run,
    log scale. Right: the run ``cached`` alone on a linear scale, above ``floor`` (dashed:
    every weight once, no attention) by the attention term that grows with the context.
    ``rows``: {label: {"context": [...], "measured": [...], "formula": [...]}}."""
    fig, (ax, zoom) = plt.subplots(1, 2, figsize=(11, 4.5))
    _measured_and_formula(ax, rows, 1e6)
    ax.set_yscale("log")
    ax.set_ylabel("matmul FLOPs per generated token (MFLOP, log scale)")
    ax.set_title("every run")
    cached = cached or next(iter(rows))
    _measured_and_formula(zoom, {cached: rows[cached]}, 1e6)
    zoom.set_ylabel("matmul FLOPs per generated token (MFLOP)")
    zoom.set_title(f"{cached} only, linear scale")
    for a in (ax, zoom):
        if floor is not None:
            a.axhline(floor / 1e6, color="gray", ls="--", lw=1, label=floor_label)
        a.set_xlabel("context length L (positions the new token attends to)")
        a.legend(fontsize=7.5)
        a.grid(alpha=0.3, which="both")
    zoom.set_ylim(bottom=0)
    fig.suptitle(title)
    return save(fig, path, rect=(0, 0, 1, 0.95))


def _spans(ax, row: int, spans: list, scale: float) -> None:
    for i, p in enumerate(spans):
        shade = 1.0 if i % 2 == 0 else 0.55          # neighbouring steps told apart
        ax.barh(row, (p["t_end"] - p["t_start"]) * scale, left=p["t_start"] * scale, height=0.6,
                color=PHASE_COLORS[p["name"]], alpha=shade, edgecolor="white", lw=0.3)


def _unit(end: float):
    return ("ns", 1e9) if end < 1e-5 else ("µs", 1e6) if end < 1e-2 else ("ms", 1e3)


def plot_generation_timeline(runs: dict, path, cached: str | None = None,
                             title="Generation on the simulated clock: a prefill, then one decode step per token"):
    """Top: every run's ``prefill`` and ``decode`` spans (:meth:`minidist.device.Device.phase`)
    on one simulated time axis. Middle: the run ``cached`` alone, on its own axis. Bottom: the
    KV-cache bytes it holds after each step. ``runs``: {label: [phase dicts with name,
    t_start, t_end, kv_cache_bytes]}."""
    cached = cached or next(iter(runs))
    fig, (top, mid, mem) = plt.subplots(3, 1, figsize=(10, 6.8), gridspec_kw={"height_ratios": [1.2, 0.7, 1]})
    end = max(p["t_end"] for spans in runs.values() for p in spans)
    unit, scale = _unit(end)
    labels = list(runs)
    for row, label in enumerate(labels):
        _spans(top, row, runs[label], scale)
    top.set_yticks(range(len(labels)), labels)
    top.invert_yaxis()
    top.set_xlabel(f"simulated time ({unit})")
    top.set_title(title)
    top.legend(handles=[Patch(color=c, label=n) for n, c in PHASE_COLORS.items()], loc="lower right", fontsize=8)
    spans = runs[cached]
    unit, scale = _unit(spans[-1]["t_end"])
    _spans(mid, 0, spans, scale)
    mid.set_yticks([0], [cached])
    mid.set_xlabel(f"simulated time ({unit})")
    mid.set_title(f"{cached}, zoomed in: {len(spans) - 1} decode steps after the prefill", fontsize=10)
    t = [p["t_end"] * scale for p in spans]
    mem.step([0] + t, [0] + [p["kv_cache_bytes"] / 2**10 for p in spans], where="post", color=COLORS[0],
             label=f"{cached}: bytes under kv_cache")
    mem.set_xlim(mid.get_xlim())
    mem.set_xlabel(f"simulated time ({unit}); the clock charges FLOPs only, not the memory reads a real decode waits for")
    mem.set_ylabel("KV cache (KiB)")
    mem.legend(fontsize=8, loc="upper left")
    mem.grid(alpha=0.3)
    return save(fig, path)
