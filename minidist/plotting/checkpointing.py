"""Figures of the checkpointing, offload and overlap chapter (:mod:`minidist.demo.checkpointing`):
the activation staircase of none / selective / full beside Korthikanti et al. 2022's bytes
per layer, the recomputed forward and cpu_checkpointing's copies on a rank's timeline, and
communication overlap (DDP with ``no_sync``, ZeRO-3's prefetch, Megatron's
``tp_comm_overlap``) as off/on timelines on one time axis.

Inputs are the chapter's measurements: activation curves over the simulated time (µs) and
Chrome-trace events (``ts``/``dur`` in µs, ``tid`` the stream)."""
from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402

from ..defaults import DDP, ZERO3  # noqa: E402
from . import save  # noqa: E402

GRAN_COLORS = {"none": "#4C72B0", "selective": "#DD8452", "full": "#C44E52"}
PASS_COLORS = {"forward": "#4C72B0", "backward": "#8C8C8C", "recompute": "#C44E52", "copy": "#55A868"}
COMM_COLORS = {"all_reduce": "#8172B3", "all_gather": "#55A868", "reduce_scatter": "#DD8452"}
KIB = 2**10


def _kind(event) -> str | None:
    return next((k for k in COMM_COLORS if event["name"].startswith(k)), None)


def plot_staircase(runs: dict, rows: list, path, title=None):
    """Top: activation bytes over the simulated time of one forward and backward, a panel per
    layout, a line per granularity; circles: where Korthikanti's bytes per layer plus the
    engine's extras put the level after each block, on top of the embedding's bytes. Bottom: bytes per layer, the
    paper's (solid) and the extras (hatched), the measured stair as a black tick.

    ``runs``: {(layout, granularity): {"times", "activations", "base", "block_ends", "stairs"}};
    ``rows``: the chapter's per-layer rows {"layout", "granularity", "stairs", "korthikanti", "extras"}."""
    layouts = list(dict.fromkeys(k[0] for k in runs))
    fig = plt.figure(figsize=(15, 8.5))
    grid = fig.add_gridspec(2, len(layouts), height_ratios=[1.15, 1])
    formula = {(r["layout"], r["granularity"]): r["korthikanti"] + sum(r["extras"].values()) for r in rows}
    top = None
    for j, lay in enumerate(layouts):
        ax = fig.add_subplot(grid[0, j], sharey=top)
        top = top or ax
        for (lay2, g), r in runs.items():
            if lay2 != lay:
                continue
            ax.step(r["times"], r["activations"] / KIB, where="post", color=GRAN_COLORS[g], lw=1.6, label=g)
            predicted = [(r["base"] + k * formula[lay, g]) / KIB for k in range(1, len(r["stairs"]) + 1)]
            ax.plot(r["block_ends"], predicted, "o", mfc="white", mec="k", ms=5, zorder=3)
        ax.set_title(f"{lay}: one forward, then backward", fontsize=10)
        ax.set_xlabel("simulated time (µs)")
        if j == 0:
            ax.set_ylabel("activation bytes held (KiB)")
        ax.plot([], [], "o", mfc="white", mec="k", ms=5, label="formula, after each block")
        ax.legend(title="granularity", fontsize=8, title_fontsize=8, loc="upper right")
        ax.grid(alpha=0.3)
    bx = fig.add_subplot(grid[1, :])
    labels = [f"{r['layout']}\n{r['granularity']}" for r in rows]
    x = np.arange(len(rows))
    paper = np.array([r["korthikanti"] for r in rows]) / KIB
    extras = np.array([sum(r["extras"].values()) for r in rows]) / KIB
    bx.bar(x, paper, 0.6, color=[GRAN_COLORS[r["granularity"]] for r in rows])
    bx.bar(x, extras, 0.6, bottom=paper, color="white", edgecolor=[GRAN_COLORS[r["granularity"]] for r in rows],
           hatch="///")
    bx.scatter(x, [r["stairs"][0] / KIB for r in rows], marker="_", s=700, color="k", zorder=3)
    for xi, r in zip(x, rows):
        bx.text(xi, r["stairs"][0] / KIB, f" {r['stairs'][0]:,} B", ha="center", va="bottom", fontsize=7.5)
    bx.set_xticks(x, labels, fontsize=8)
    bx.set_ylabel("bytes per layer (KiB)")
    bx.set_title("each stair: Korthikanti et al. 2022's bytes per layer + the engine's extras "
                 "(LayerNorm's fp32 inputs +4sbh, 1/σ per token +8sb; ÷t under SP)", fontsize=10)
    handles = [Patch(color="#999999", label="Korthikanti (16-bit activations, 1-byte dropout masks)"),
               Patch(facecolor="white", edgecolor="#999999", hatch="///", label="engine's extras"),
               plt.Line2D([], [], color="k", marker="_", ls="", markersize=14, label="measured stair")]
    bx.legend(handles=handles, fontsize=8, loc="upper right")
    bx.grid(axis="y", alpha=0.3)
    fig.suptitle(title or "The activation staircase: each block's forward adds one stair, backward walks down "
                          "(circles: the levels the formulas predict)")
    return save(fig, path, rect=(0, 0, 1, 0.96))


def _passes(events, forward_end: float) -> dict:
    """Spans (start, duration) of a rank's trace by pass: forward, backward, recompute, copy."""
    out = {k: [] for k in PASS_COLORS}
    for e in events:
        if e.get("ph") != "X":
            continue
        if e["tid"] in ("d2h", "h2d"):
            kind = "copy"
        elif e["tid"] != "compute":
            continue
        elif e["name"].startswith("recompute "):
            kind = "recompute"
        else:
            kind = "forward" if e["ts"] < forward_end else "backward"
        out[kind].append((e["tid"], e["ts"], e["dur"]))
    return out


def plot_recompute_timeline(runs: dict, path, title=None):
    """Top: one forward and backward per run as lanes (compute, and the host copies' d2h / h2d
    streams where there are any), coloured by pass. Bottom: activation bytes on the device and in
    the host pool over the same time. ``runs``: {label: {"events", "forward_end", "times",
    "activations", "host_times", "host"}}."""
    lanes = []
    for label, r in runs.items():
        streams = ["compute"] + [s for s in ("d2h", "h2d") if any(e["tid"] == s for e in r["events"])]
        lanes += [(label, s) for s in streams]
    fig, (ax, bx) = plt.subplots(2, 1, figsize=(13, 7.5), sharex=True, height_ratios=[1, 1])
    for y, (label, stream) in enumerate(lanes):
        r = runs[label]
        for kind, spans in _passes(r["events"], r["forward_end"]).items():
            bars = [(ts, max(dur, 0.6)) for tid, ts, dur in spans if tid == stream]   # a copy stays visible
            if bars:
                ax.broken_barh(bars, (y - 0.35, 0.7), facecolors=PASS_COLORS[kind])
    ax.set_yticks(range(len(lanes)), [f"{label}: {stream}" for label, stream in lanes], fontsize=8)
    ax.set_ylim(len(lanes) - 0.5, -0.5)
    ax.legend(handles=[Patch(color=c, label={"copy": "d2h / h2d checkpoint copy"}.get(k, k))
                       for k, c in PASS_COLORS.items()], fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1))
    ax.set_title("the recomputed forward (recompute <op>) runs inside backward; cpu_checkpointing copies each "
                 "block's input to the host after its forward and back before its recompute", fontsize=10)
    for (label, r), color in zip(runs.items(), ("#4C72B0", "#C44E52", "#55A868")):
        bx.step(r["times"], r["activations"] / KIB, where="post", color=color, label=f"{label}: device")
        if r["host"].any():
            bx.step(r["host_times"], r["host"] / KIB, where="post", color=color, ls="--",
                    label=f"{label}: host pool")
    bx.set_xlabel("simulated time (µs)")
    bx.set_ylabel("activation bytes held (KiB)")
    bx.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1))
    bx.grid(alpha=0.3)
    fig.suptitle(title or "Full recomputation on one rank: the extra forward, and the checkpoints' trips to the host")
    return save(fig, path, rect=(0, 0, 1, 0.96))


def _overlap_panel(ax, pair: dict, title: str, micro_batches: int = 0) -> None:
    """Four lanes — off: compute, comm; on: compute, comm — on one time axis; a line where each step ends."""
    lanes = [("off", "compute"), ("off", "comm"), ("on", "compute"), ("on", "comm")]
    for y, (which, stream) in enumerate(lanes):
        run = pair[which]
        events = [e for e in run["events"] if e["tid"] == stream]
        if stream == "compute":
            shade = [0] * len(events)
            if micro_batches:                         # DDP: the micro-batches, shaded in turn
                shade = [sum(e["ts"] >= t0 for t0, _ in run["spans"][1:]) % 2 for e in events]
            for s, color in enumerate(("#4C72B0", "#86A5D9")):
                ax.broken_barh([(e["ts"], e["dur"]) for e, m in zip(events, shade) if m == s], (y - 0.35, 0.7),
                               facecolors=color)
            if micro_batches:                         # no_sync before the last
                for m, (t0, t1) in enumerate(run["spans"]):
                    ax.text((t0 + t1) / 2, y, f"micro-batch {m + 1}" + (" · no_sync" if m < micro_batches - 1 else ""),
                            ha="center", va="center", fontsize=7, color="white", fontweight="bold")
        else:
            for kind, color in COMM_COLORS.items():
                bars = [(e["ts"], e["dur"]) for e in events if _kind(e) == kind]
                if bars:
                    ax.broken_barh(bars, (y - 0.35, 0.7), facecolors=color, edgecolor="white", linewidth=0.3)
        end = run["step_us"]
        ax.plot([end, end], [y - 0.45, y + 0.45], color="k", lw=1.5)
    ax.set_yticks(range(4), [f"{w}: {s}" for w, s in lanes], fontsize=8)
    ax.set_ylim(3.6, -0.6)
    ax.set_title(f"{title} — step {pair['off']['step_us']:.0f} µs off, {pair['on']['step_us']:.0f} µs on: "
                 f"{pair['off']['step_us'] - pair['on']['step_us']:.0f} µs saved", fontsize=9.5, loc="left")
    ax.set_xlabel("simulated time (µs)", fontsize=8)
    ax.tick_params(axis="x", labelsize=8)


def plot_overlap_timelines(overlap: dict, micro_batches: int, path, title=None, world_size: int | None = None):
    """A panel per mechanism, each its off and on runs of rank 0 on one time axis: DDP
    (``overlap_comm``, under ``no_sync`` but in the last micro-batch), ZeRO-3 prefetch,
    ``tp_comm_overlap`` under TP 2 and TP 2 + SP. ``overlap``: {name: {"off", "on"}}, each run
    {"events", "step_us"} (DDP also "spans": each micro-batch's compute span). ``world_size``:
    the ranks DDP and ZeRO-3 ran on, for their panels' titles."""
    on = f" on {world_size} ranks" if world_size else ""
    panels = [(DDP, f"DDP{on}, {micro_batches} micro-batches: overlap_comm off / on"),
              (ZERO3, f"ZeRO-3{on}: stage3_prefetch_bucket_size 0 (off) / DeepSpeed's default (on)"),
              ("tp", "TP 2: tp_comm_overlap off / on (dX's all-reduce under dW)"),
              ("tp+sp", "TP 2 + SP: tp_comm_overlap off / on (all-gather under dX, reduce-scatter under dW)")]
    panels = [(k, t) for k, t in panels if overlap.get(k)]
    fig, axes = plt.subplots(len(panels), 1, figsize=(14, 2.3 * len(panels) + 0.8))
    for ax, (key, label) in zip(np.atleast_1d(axes), panels):
        _overlap_panel(ax, overlap[key], label, micro_batches if key == DDP else 0)
    handles = [Patch(color="#4C72B0", label="compute")] + [Patch(color=c, label=k.replace("_", "-"))
                                                          for k, c in COMM_COLORS.items()]
    handles.append(plt.Line2D([], [], color="k", lw=1.5, label="end of the step"))
    fig.legend(handles=handles, loc="lower center", ncol=len(handles), fontsize=9)
    fig.suptitle(title or "Communication overlap on rank 0's timeline: the same step with overlap off and on "
                          "(losses and weights bit-identical)")
    return save(fig, path, rect=(0, 0.04, 1, 0.97))
