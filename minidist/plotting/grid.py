"""Figures of the 3D chapter: the process grid as boxes (which world rank holds which pipeline
stage and tensor shard, and the groups one rank talks in), and every DP × TP × PP layout of
the tour's world side by side — memory per rank, bytes per step, step time — measured beside
the estimate."""
from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402
from matplotlib.patches import Patch, Rectangle  # noqa: E402

from ..parallel.grid import GridShape  # noqa: E402
from .memory import COLORS, LABELS  # noqa: E402
from . import save  # noqa: E402

STAGE_COLORS = ["#A6CEE3", "#FDBF6F", "#B2DF8A", "#FB9A99", "#CAB2D6", "#FFFF99", "#D9D9D9", "#BC80BD"]
# one outline per group of the highlighted rank: (colour, line style, inset from the box's edge)
GROUP_STYLE = {"tp": ("#E31A1C", "-", 0.03), "dp": ("#1F78B4", "--", 0.065), "pp": ("#33A02C", ":", 0.10)}
GROUP_TEXT = {"tp": "tensor parallel: Megatron's f/g all-reduces inside every layer",
              "dp": "data parallel: gradient all-reduce (DDP) or ZeRO's reduce-scatter + all-gather",
              "pp": "pipeline: activations forward, gradients back (send/recv)"}
STATES = ("parameters", "gradients", "optimizer_states")
BOX_W, BOX_H, STAGE_GAP, MARGIN = 1.3, 1.0, 0.45, 0.05


def stage_contents(pp_rank: int, pp: int, n_layer: int) -> str:
    """What pipeline rank ``pp_rank`` holds with one chunk per rank (1F1B, GPipe): its L/p blocks,
    the embeddings on the first, ln_f and the tied LM head on the last."""
    per = n_layer // pp
    first, last = pp_rank * per, (pp_rank + 1) * per - 1
    parts = (["wte, wpe"] if pp_rank == 0 else []) + \
            [f"block {first}" if first == last else f"blocks {first}–{last}"] + \
            (["ln_f, head (= wte)"] if pp_rank == pp - 1 else [])
    return ", ".join(parts)


def rank_map(shape: GridShape, n_layer: int, n_head: int) -> list:
    """One box per world rank of ``shape``: its coordinates, where it is drawn and what it holds.

    Columns are the pipeline stages left to right (the model flows that way), each cut into its
    tp shards; rows are the data-parallel replicas. Returns, in rank order, dicts with ``rank``,
    ``dp``, ``pp``, ``tp``, ``col`` (``pp · tp_size + tp``), ``row`` (``dp``), ``stage`` (the
    pipeline stage's layers) and ``heads`` (the attention heads of its tp shard)."""
    heads = n_head // shape.tp
    boxes = []
    for rank in range(shape.world_size):
        c = shape.coords(rank)
        lo = c["tp"] * heads
        boxes.append({"rank": rank, "dp": c["dp"], "pp": c["pp"], "tp": c["tp"],
                      "col": c["pp"] * shape.tp + c["tp"], "row": c["dp"],
                      "stage": stage_contents(c["pp"], shape.pp, n_layer),
                      "heads": f"head {lo}" if heads == 1 else f"heads {lo}–{lo + heads - 1}"})
    return boxes


def _corner(box) -> tuple:
    """Lower-left corner of a box: a gap between stages, replica 0 on top."""
    return box["col"] * BOX_W + box["pp"] * STAGE_GAP, -box["row"] * BOX_H


def plot_grid_map(shape: GridShape, path, rank: int, n_layer: int = 4, n_head: int = 4, title=None):
    """The grid as boxes coloured by pipeline stage, labelled with world rank, coordinates and
    tp shard; the tp, dp and pp groups of ``rank`` outlined (GridShape.group_of)."""
    boxes = rank_map(shape, n_layer, n_head)
    fig, ax = plt.subplots(figsize=(2.3 * shape.tp * shape.pp + 1.5, 1.4 * shape.dp + 2.4))
    for b in boxes:
        x, y = _corner(b)
        ax.add_patch(Rectangle((x + MARGIN, y + MARGIN), BOX_W - 2 * MARGIN, BOX_H - 2 * MARGIN,
                               facecolor=STAGE_COLORS[b["pp"] % 8],
                               edgecolor="k", lw=2.2 if b["rank"] == rank else 0.8))
        ax.text(x + BOX_W / 2, y + BOX_H * 0.64, f"rank {b['rank']}", ha="center", va="center", fontsize=12,
                fontweight="bold")
        ax.text(x + BOX_W / 2, y + BOX_H * 0.38, f"dp {b['dp']} · pp {b['pp']} · tp {b['tp']}\n{b['heads']}",
                ha="center", va="center", fontsize=7.5)
    for p in range(shape.pp):                    # stage headers above the columns
        x0 = _corner({"col": p * shape.tp, "pp": p, "row": 0})[0]
        ax.text(x0 + shape.tp * BOX_W / 2, BOX_H + 0.12, f"pipeline stage {p}\n{stage_contents(p, shape.pp, n_layer)}",
                ha="center", va="bottom", fontsize=9)
    for d in range(shape.dp):                    # replica labels on the left
        ax.text(-0.1, -d * BOX_H + BOX_H / 2, f"data-parallel\nreplica {d}", ha="right", va="center", fontsize=9)
    handles = []
    for dim, (color, style, inset) in GROUP_STYLE.items():
        members = shape.group_of(rank, dim)
        for b in (boxes[r] for r in members):
            x, y = _corner(b)
            ax.add_patch(Rectangle((x + MARGIN + inset, y + MARGIN + inset), BOX_W - 2 * (MARGIN + inset),
                                   BOX_H - 2 * (MARGIN + inset), fill=False, edgecolor=color, ls=style, lw=2.2))
        handles.append(Line2D([], [], color=color, ls=style, lw=2.2,
                              label=f"{dim} group of rank {rank} = ranks {', '.join(map(str, members))}: {GROUP_TEXT[dim]}"))
    handles += [Patch(facecolor=STAGE_COLORS[p % 8], edgecolor="k", label=f"pipeline stage {p}") for p in range(shape.pp)]
    width = shape.tp * shape.pp * BOX_W + (shape.pp - 1) * STAGE_GAP
    ax.set_xlim(-1.1, width + 0.1)
    ax.set_ylim(-(shape.dp - 1) * BOX_H - 0.05, BOX_H + 0.6)
    ax.set_aspect("equal")
    ax.axis("off")
    fig.legend(handles=handles, loc="lower center", ncol=1, fontsize=8, frameon=False)
    c = shape.coords(rank)
    fig.suptitle(title or f"{shape.world_size} ranks as DP {shape.dp} × TP {shape.tp} × PP {shape.pp} (Megatron's order, "
                          f"tp fastest): rank = tp + {shape.tp}·(dp + {shape.dp}·pp)\n"
                          f"e.g. rank {rank} = {c['tp']} + {shape.tp}·({c['dp']} + {shape.dp}·{c['pp']}); "
                          f"its three groups are outlined", fontsize=11)
    return save(fig, path, rect=(0, 0.04 + 0.035 * len(handles), 1, 0.93))


def plot_layouts(rows: list, path, compute_only: float | None = None, one_rank: float | None = None,
                 title="Every DP × TP × PP layout of 4 ranks, one training step, measured beside the estimate"):
    """Three panels over the layouts, one bar per rank (rank order) in the first two.

    Left: model states at the optimizer step by kind (measured) with activations' peak on top,
    the estimate's model states as a black tick and the device's peak as a red dot. Middle: bytes
    each rank sent in the step, measured bars and the estimate's ticks. Right: the step time of
    the slowest rank, with the compute-only time of a perfect split and the pipeline bubble.

    ``rows``: [{"label", "step_ms", "bubble_measured", "bubble_theory", "ranks": [{"model_states",
    "model_states_estimate", "activations", "peak", "bytes_sent", "bytes_sent_estimate"}]}]
    (bytes; ``bubble_*`` None without a pipeline); ``compute_only``, ``one_rank``: ms.
    """
    fig, (ax, bx, cx) = plt.subplots(1, 3, figsize=(17, 6.6), gridspec_kw={"width_ratios": [1.25, 1.25, 0.9]})
    n = max(len(r["ranks"]) for r in rows)
    w = 0.8 / n
    kib = 2.0 ** -10
    for i, row in enumerate(rows):
        xs = i - 0.4 + w / 2 + w * np.arange(len(row["ranks"]))
        bottom = np.zeros(len(xs))
        for c in STATES:
            v = np.array([r["model_states"][c] for r in row["ranks"]]) * kib
            ax.bar(xs, v, w * 0.92, bottom=bottom, color=COLORS[c],
                   label=LABELS[c] + ", at the optimizer step" if i == 0 else None)
            bottom += v
        ax.bar(xs, np.array([r["activations"] for r in row["ranks"]]) * kib, w * 0.92, bottom=bottom,
               color=COLORS["activations"], alpha=0.45,
               label="+ activations at their own peak" if i == 0 else None)
        ax.scatter(xs, [r["model_states_estimate"] * kib for r in row["ranks"]], marker="_", s=140, color="k",
                   zorder=3, label="estimate of the model states (grid3d)" if i == 0 else None)
        ax.scatter(xs, [r["peak"] * kib for r in row["ranks"]], marker="o", s=12, color="#E31A1C", zorder=4,
                   label="device peak (one moment, comm buffers too)" if i == 0 else None)
        bx.bar(xs, [r["bytes_sent"] * kib for r in row["ranks"]], w * 0.92, color="#4C72B0",
               label="measured (message log)" if i == 0 else None)
        bx.scatter(xs, [r["bytes_sent_estimate"] * kib for r in row["ranks"]], marker="_", s=140, color="k", zorder=3,
                   label="estimate (grid3d)" if i == 0 else None)
    labels = [r["label"] for r in rows]
    ranks = ", ".join(map(str, range(n)))
    for a, ylabel, sub in ((ax, "bytes per rank (KiB)", f"memory per rank (one bar per rank {ranks})"),
                           (bx, "bytes sent per rank in one step (KiB)", f"communication per rank (ranks {ranks})")):
        a.set_xticks(np.arange(len(rows)), labels, fontsize=8)
        a.set_xlabel("layout DP × TP × PP")
        a.set_ylabel(ylabel)
        a.set_title(sub)
        a.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.13), ncol=2, frameon=False)
    ms = [r["step_ms"] for r in rows]
    cx.bar(np.arange(len(rows)), ms, 0.6, color="#8172B3", label="step time, slowest rank (simulated)")
    for i, r in enumerate(rows):
        if r.get("bubble_measured") is not None:
            cx.text(i, ms[i], f"bubble\n{r['bubble_measured']:.0%}\n(theory\n{r['bubble_theory']:.0%})",
                    ha="center", va="bottom", fontsize=7)
    if compute_only is not None:
        cx.axhline(compute_only, color="k", ls="--", lw=1,
                   label=f"compute only, perfect split: {compute_only:.2f} ms")
    cx.set_xticks(np.arange(len(rows)), labels, fontsize=8)
    cx.set_xlabel("layout DP × TP × PP")
    cx.set_ylabel("simulated time per step (ms)")
    cx.set_ylim(0, max(ms) * 1.3)
    cx.set_title("step time" + (f" (one rank: {one_rank:.1f} ms)" if one_rank is not None else ""))
    cx.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.13), ncol=1, frameon=False)
    fig.suptitle(title)
    return save(fig, path)
