"""Figures of the parameter-efficient fine-tuning chapter: each method's trainable share,
memory, step time, held-out loss and loss curves side by side; and the costs it measured
beside their formulas (bytes sent per step under DDP/ZeRO-2/ZeRO-3, FLOPs per token).

Every number comes from :mod:`minidist.peft.compare` runs (several seeds: the mean, whiskers
from the smallest to the largest seed); none is typed in here.
"""
from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from . import save  # noqa: E402

COLORS = ["#333333", "#4C72B0", "#DD8452", "#C44E52", "#55A868", "#2E8B57", "#1B5E20", "#8172B3"]


def _bars(ax, labels, values, err=None, log=False):
    x = np.arange(len(labels))
    ax.bar(x, values, color=COLORS[:len(labels)], yerr=err, capsize=4 if err is not None else 0)
    ax.set_xticks(x, labels, rotation=30, ha="right", fontsize=8)
    if log:
        ax.set_yscale("log")


def plot_comparison(summary: dict, results: list, n_seeds: int, path,
                    title="Fine-tuning methods side by side"):
    """Six panels over the methods of ``summary`` (:func:`minidist.peft.compare.summarize`):
    trainable share (log), model-state bytes split by kind beside the device's peak, simulated
    step time; held-out loss and exact match (mean; whiskers smallest to largest seed) and the
    training-loss curves (mean over seeds). ``results``: the runs (their ``losses``)."""
    labels = list(summary)
    fig, axes = plt.subplots(2, 3, figsize=(17, 10))
    ax = axes[0, 0]
    _bars(ax, labels, [100 * summary[k]["share"]["mean"] for k in labels], log=True)
    ax.set_ylabel("trainable parameters (% of all, log)")
    ax.set_title("trainable share")
    ax = axes[0, 1]
    x = np.arange(len(labels))
    bottom = np.zeros(len(labels))
    for kind, color in (("parameters", "#4C72B0"), ("gradients", "#DD8452"), ("optimizer_states", "#55A868"),
                        ("host", "#BBBBBB")):
        vals = np.array([summary[k]["model_states"][kind] for k in labels]) / 1024
        name = "optimizer states paged to the host" if kind == "host" else kind.replace("_", " ")
        ax.bar(x, vals, bottom=bottom, color=color, label=name)
        bottom += vals
    peaks = [summary[k]["peak_bytes"]["mean"] / 1024 for k in labels]
    ax.plot(x, peaks, "k_", ms=18, mew=2, label="device peak (with activations)")
    ax.set_xticks(x, labels, rotation=30, ha="right", fontsize=8)
    ax.set_ylim(0, 1.4 * max(peaks))                      # room for the legend above the bars
    ax.set_ylabel("bytes per rank (KiB)")
    ax.set_title("memory per rank: model states at the step, and the peak")
    ax.legend(fontsize=7, ncol=2, loc="upper center")
    ax = axes[0, 2]
    _bars(ax, labels, [summary[k]["step_time"]["mean"] * 1e6 for k in labels])
    ax.set_ylabel("simulated step time (µs, A100 preset)")
    ax.set_title("step time (QLoRA: its paged states cross PCIe)")
    for ax, key, ylabel in ((axes[1, 0], "held_out_loss", "held-out loss (nats per answer token)"),
                            (axes[1, 1], "exact_match", "held-out exact match (fraction of answers)")):
        mean = np.array([summary[k][key]["mean"] for k in labels])
        err = np.array([mean - [summary[k][key]["min"] for k in labels],
                        np.array([summary[k][key]["max"] for k in labels]) - mean])
        _bars(ax, labels, mean, err=err)
        ax.set_ylabel(ylabel)
        spread = f"{n_seeds} seeds; whiskers: smallest to largest" if n_seeds > 1 else "1 seed"
        ax.set_title(f"{ylabel.split(' (')[0]} ({spread})")
    ax = axes[1, 2]
    for i, label in enumerate(labels):
        curves = np.array([r["losses"] for r in results if r["method"] == label])
        ax.plot(np.arange(1, curves.shape[1] + 1), curves.mean(axis=0), color=COLORS[i], label=label)
    ax.set_yscale("log")
    ax.set_xlabel("fine-tuning step")
    ax.set_ylabel("training loss (nats, log)")
    ax.set_title("training loss (mean over seeds)" if n_seeds > 1 else "training loss (1 seed)")
    ax.legend(fontsize=7)
    fig.suptitle(title)
    return save(fig, path, rect=(0, 0, 1, 0.97))


def plot_costs(costs: dict, traffic: dict, world: int, path, title="What a fine-tuning step costs, measured"):
    """Left: bytes one rank sends per step under DDP, ZeRO-2 and ZeRO-3 (the frozen shards
    ZeRO-3 gathers hatched), formula as a black tick. Right: matmul FLOPs per token of one
    step, forward / input gradients / weight gradients (the formulas of forward and dW as
    ticks). ``costs``: :func:`~minidist.peft.compare.one_step_costs` per method; ``traffic``:
    :func:`~minidist.peft.compare.traffic` per method."""
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(18, 5.5))
    labels = list(traffic)
    names = list(next(iter(traffic.values())))
    width = 0.8 / len(names)
    for j, name in enumerate(names):
        x = np.arange(len(labels)) + (j - (len(names) - 1) / 2) * width
        meas = np.array([traffic[k][name]["measured"] for k in labels]) / 1024
        frozen = np.array([traffic[k][name].get("frozen_gathered", 0) for k in labels]) / 1024
        ax.bar(x, meas - frozen, width, color=COLORS[1 + j], label=name)
        ax.bar(x, frozen, width, bottom=meas - frozen, color=COLORS[1 + j], hatch="//", edgecolor="white",
               label=f"{name}: frozen shards gathered" if frozen.any() else None)
        ax.plot(x, [traffic[k][name]["formula"] / 1024 for k in labels], "k_", ms=10, mew=2,
                label="formula" if j == 0 else None)
    ax.set_xticks(np.arange(len(labels)), labels, rotation=25, ha="right", fontsize=8)
    ax.set_yscale("log")
    ax.set_ylim(bottom=1)
    ax.set_ylabel("bytes sent per step and rank (KiB, log)")
    ax.set_title(f"data-parallel traffic on {world} ranks: only trainable gradients travel")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    labels = list(costs)
    x = np.arange(len(labels))
    fwd = np.array([costs[k]["forward_flops"] / costs[k]["tokens"] for k in labels])
    dw = np.array([costs[k]["dw_flops"] / costs[k]["tokens"] for k in labels])
    dx = np.array([costs[k]["backward_flops"] / costs[k]["tokens"] for k in labels]) - dw
    bx.bar(x, fwd, color="#4C72B0", label="forward")
    bx.bar(x, dx, bottom=fwd, color="#DD8452", label="backward: input gradients (and attention)")
    bx.bar(x, dw, bottom=fwd + dx, color="#55A868", label="backward: weight gradients")
    bx.plot(x, [costs[k]["forward_flops_formula"] / costs[k]["tokens"] for k in labels], "k_", ms=14, mew=2,
            label="formula: forward")
    bx.plot(x, fwd + dx + [costs[k]["dw_flops_formula"] / costs[k]["tokens"] for k in labels], "r_", ms=14, mew=2,
            label="formula: + weight gradients")
    bx.set_xticks(x, labels, rotation=25, ha="right", fontsize=8)
    bx.set_ylabel("matmul FLOPs per token (one step)")
    bx.set_title("compute: a frozen weight costs no weight gradient")
    bx.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    fig.suptitle(title)
    return save(fig, path, rect=(0, 0, 1, 0.95))
