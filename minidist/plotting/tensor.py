"""Figures of the tensor-parallel chapter: which slice of each weight lives on which rank,
activation bytes per rank (none / TP / TP+SP) against Korthikanti's formulas, and the
bytes each collective moves per layer."""
from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.colors import ListedColormap  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402
from . import save  # noqa: E402

RANK_COLORS = ["#4C72B0", "#DD8452", "#55A868", "#C44E52", "#8172B3", "#937860", "#DA8BC3", "#8C8C8C"]
OP_COLORS = {"all_reduce": "#4C72B0", "all_gather": "#55A868", "reduce_scatter": "#DD8452"}


def plot_weight_shards(owners: dict, tp: int, path, title=None):
    """One panel per weight: every element coloured by the tp rank that holds it (grey: replicated,
    white: vocabulary padding). ``owners``: {name: int array, rank per element, -1 replicated, -2 padding}."""
    fig, axes = plt.subplots(1, len(owners), figsize=(3.2 * len(owners), 3.6))
    cmap = ListedColormap(["white", "#BBBBBB"] + RANK_COLORS[:tp])
    for ax, (name, own) in zip(np.atleast_1d(axes), owners.items()):
        ax.imshow(own + 2, cmap=cmap, vmin=0, vmax=tp + 1, aspect="auto", interpolation="nearest")
        ax.set_title(name, fontsize=9)
        if name.startswith("wte"):            # drawn transposed: one column per vocabulary entry
            ax.set_xlabel(f"vocabulary entries ({own.shape[1]}, padding included)")
            ax.set_ylabel(f"embedding features ({own.shape[0]})")
        else:
            ax.set_xlabel(f"output features (columns, {own.shape[1]})")
            ax.set_ylabel(f"input features (rows, {own.shape[0]})")
        if name.startswith("attn.c_attn"):    # the q | k | v thirds
            for x in (own.shape[1] / 3 - 0.5, 2 * own.shape[1] / 3 - 0.5):
                ax.axvline(x, color="k", lw=1.5)
    handles = [Patch(color=RANK_COLORS[r], label=f"tp rank {r}") for r in range(tp)]
    handles += [Patch(color="#BBBBBB", label="replicated"), Patch(facecolor="white", edgecolor="k", label="padding")]
    fig.legend(handles=handles, loc="lower center", ncol=tp + 2, fontsize=8)
    fig.suptitle(title or f"Which rank holds which slice (t = {tp}): c_attn by heads of q, k, v; "
                          f"c_proj by rows; c_fc by columns; wte by vocabulary rows")
    save(fig, path, rect=(0, 0.08, 1, 0.95))


def plot_activation_bytes(rows: list, path, title="Activation bytes per rank, one micro-batch"):
    """Bars: measured activation peak per rank; black ticks: the engine's formula (Korthikanti
    et al. 2022 mapped onto it); hollow bars: the paper's 16-bit formula with dropout masks.
    ``rows``: [{"label", "measured", "formula", "paper"}]."""
    x = np.arange(len(rows))
    fig, ax = plt.subplots(figsize=(8, 4.5))
    ax.bar(x - 0.2, [r["measured"] / 2**10 for r in rows], 0.4, color="#4C72B0", label="measured peak (simulated device)")
    ax.scatter(x - 0.2, [r["formula"] / 2**10 for r in rows], marker="_", s=700, color="k", zorder=3,
               label="Korthikanti mapped onto the engine (no dropout, whole model)")
    ax.bar(x + 0.2, [r["paper"] / 2**10 for r in rows], 0.4, color="white", edgecolor="#C44E52",
           label="Korthikanti Table 2 (16-bit, dropout masks), layers only")
    _finish(fig, ax, [r["label"] for r in rows], "activation bytes per rank (KiB)", title, path)


def plot_layer_collectives(rows: dict, path, title="Bytes each rank sends per Transformer layer, by collective"):
    """Stacked bars per mode: bytes per layer per micro-batch by collective (measured as the
    difference of a 2-layer and a 1-layer run). ``rows``: {label: {op: bytes}}."""
    labels = list(rows)
    x = np.arange(len(labels))
    fig, ax = plt.subplots(figsize=(8, 4.5))
    bottom = np.zeros(len(labels))
    for op, color in OP_COLORS.items():
        v = np.array([rows[k].get(op, 0) for k in labels]) / 2**10
        ax.bar(x, v, bottom=bottom, color=color, label=op.replace("_", "-"))
        bottom += v
    _finish(fig, ax, labels, "bytes sent per rank per layer (KiB)", title, path)


def _finish(fig, ax, labels, ylabel, title, path) -> None:
    """Label a bar chart with one bar (group) per mode, and write it."""
    ax.set_xticks(np.arange(len(labels)), labels)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend(fontsize=8)
    save(fig, path)
