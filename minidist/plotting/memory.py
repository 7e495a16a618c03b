"""Memory figures: a rank's memory timeline by category, and per-category stacked bars."""
from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from ..memory import CATEGORIES  # noqa: E402
from . import save  # noqa: E402

COLORS = {"parameters": "#4C72B0", "gradients": "#DD8452", "optimizer_states": "#55A868",
          "activations": "#C44E52", "kv_cache": "#DA8BC3", "buffers": "#8172B3", "other": "#937860"}
LABELS = {"parameters": "parameters", "gradients": "gradients", "optimizer_states": "optimizer states",
          "activations": "activations (saved for backward)", "kv_cache": "KV cache (generation)",
          "buffers": "comm buffers", "other": "other"}


def _mib(x):
    return np.asarray(x) / 2**20


def plot_memory_timeline(tracker, path, title="Memory of one training step", marks=None):
    """Stacked area of bytes held per category over the tracker's allocation events.

    ``marks`` is an optional list of (event_index, label) drawn as vertical lines
    (e.g. "forward ends", "optimizer step").
    """
    _, per = tracker.curves()
    x = np.arange(len(per["parameters"]))
    cats = [c for c in CATEGORIES if c != "kv_cache" or per[c].any()]      # training never holds a KV cache
    fig, ax = plt.subplots(figsize=(10, 4.2))
    ax.stackplot(x, *[_mib(per[c]) for c in cats], labels=[LABELS[c] for c in cats],
                 colors=[COLORS[c] for c in cats], alpha=0.9, step="post")
    for idx, label in marks or []:
        ax.axvline(idx, color="k", ls="--", lw=0.8)
        ax.text(idx, ax.get_ylim()[1] * 0.98, " " + label, va="top", ha="left", fontsize=8, rotation=90)
    ax.set_xlabel("allocation event (time order)")
    ax.set_ylabel("memory held (MiB)")
    ax.set_title(title)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8)
    ax.margins(x=0)
    return save(fig, path)


def plot_memory_bars(rows: dict, path, title="Memory per rank by category", capacity=None, unit="MiB"):
    """Stacked bars, one per label in ``rows`` ({label: {category: bytes}}).

    ``capacity`` (bytes) draws the device limit as a red line.
    """
    scale = {"MiB": 2**20, "GiB": 2**30, "GB": 1e9, "KiB": 2**10}[unit]
    labels = list(rows)
    fig, ax = plt.subplots(figsize=(1.3 * len(labels) + 3, 4.2))
    bottom = np.zeros(len(labels))
    for c in CATEGORIES:
        vals = np.array([rows[k].get(c, 0) for k in labels]) / scale
        if vals.any():
            ax.bar(labels, vals, bottom=bottom, color=COLORS[c], label=LABELS[c])
            bottom += vals
    if capacity is not None:
        ax.axhline(capacity / scale, color="red", ls="--", label="device capacity")
    for i, total in enumerate(bottom):
        ax.text(i, total, f"{total:.2f}", ha="center", va="bottom", fontsize=8)
    ax.set_ylabel(f"memory per rank ({unit})")
    ax.set_title(title)
    ax.legend(fontsize=8)
    return save(fig, path)


def plot_loss_curves(curves: dict, path, title="Training loss", reference=None, ref_label=None):
    """Loss per step for each labelled run; ``reference`` draws a horizontal line (e.g. entropy)."""
    fig, ax = plt.subplots(figsize=(7, 4))
    for label, losses in curves.items():
        ax.plot(np.arange(1, len(losses) + 1), losses, label=label)
    if reference is not None:
        ax.axhline(reference, color="gray", ls="--", label=ref_label or "reference")
    ax.set_xlabel("step")
    ax.set_ylabel("cross-entropy loss (nats/token)")
    ax.set_title(title)
    ax.legend()
    return save(fig, path)
