"""Figures of the data parallel and ZeRO chapter: per-rank model states per strategy (the
ZeRO paper's Figure 1 as stacked bars, measured), bytes moved per step, a ZeRO-3 timeline."""
from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from .memory import COLORS, LABELS  # noqa: E402
from . import save  # noqa: E402

STATES = ("parameters", "gradients", "optimizer_states")


def plot_zero_memory(rows: dict, path, title="Per-rank model states and traffic", capacity=None):
    """Left: stacked bars of measured device bytes per state (and host bytes, hatched) per
    strategy, with the formula as a black tick. Right: bytes sent per rank per step,
    measured bars beside the formula.

    ``rows``: {label: {"measured": {state: bytes, "host": bytes}, "formula_total": bytes,
    "bytes_sent": bytes, "formula_bytes": bytes}}
    """
    labels = list(rows)
    x = np.arange(len(labels))
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(12, 4.5))
    bottom = np.zeros(len(labels))
    for c in STATES:
        v = np.array([rows[k]["measured"][c] for k in labels]) / 2**10
        ax.bar(x, v, bottom=bottom, color=COLORS[c], label=LABELS[c] + " (device)")
        bottom += v
    host = np.array([rows[k]["measured"].get("host", 0) for k in labels]) / 2**10
    if host.any():
        ax.bar(x, host, bottom=bottom, color="white", edgecolor="#55A868", hatch="//",
               label="host memory (offload)")
    ax.scatter(x, [rows[k]["formula_total"] / 2**10 for k in labels], marker="_", s=900, color="k", zorder=3,
               label="ZeRO formula, device total")
    if capacity:
        ax.axhline(capacity / 2**10, color="red", ls="--", label="device capacity")
    ax.set_xticks(x, labels)
    ax.set_ylabel("bytes held at the optimizer step (KiB)")
    ax.set_title("model states per rank")
    ax.legend(fontsize=8)
    w = 0.38
    bx.bar(x - w / 2, [rows[k]["bytes_sent"] / 2**10 for k in labels], w, color="#4C72B0", label="measured (message log)")
    bx.bar(x + w / 2, [rows[k]["formula_bytes"] / 2**10 for k in labels], w, color="#BBBBBB",
           label="formula 2(p−1)/p·Ψ, 3(p−1)/p·Ψ")
    bx.set_xticks(x, labels)
    bx.set_ylabel("bytes sent per rank per step (KiB)")
    bx.set_title("communication per step")
    bx.legend(fontsize=8)
    fig.suptitle(title)
    return save(fig, path)


def plot_step_timeline(events, path, title="One ZeRO-3 step on rank 0", streams=("compute", "comm")):
    """Gantt chart of a rank's trace events: one lane per stream, collectives coloured by kind."""
    kinds = {"all_gather": "#4C72B0", "reduce_scatter": "#DD8452", "all_reduce": "#8172B3"}
    fig, ax = plt.subplots(figsize=(12, 3.2))
    seen = set()
    for lane, stream in enumerate(streams):
        for e in events:
            if e.get("ph") != "X" or e.get("tid") != stream or e["name"].startswith(("send", "recv")):
                continue
            kind = next((k for k in kinds if e["name"].startswith(k)), None)
            color = kinds.get(kind, "#55A868" if stream == "compute" else "#999999")
            label = kind or ("compute" if stream == "compute" else "other")
            ax.barh(lane, e["dur"], left=e["ts"], height=0.6, color=color,
                    label=None if label in seen else label.replace("_", "-"))
            seen.add(label)
    ax.set_yticks(range(len(streams)), [f"{s} stream" for s in streams])
    ax.set_xlabel("simulated time (µs)")
    ax.set_title(title)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8)
    return save(fig, path)
