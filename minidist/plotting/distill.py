"""Figures of the distillation chapter: distilled vs hard-label students over seeds, the
temperature sweep, KD vs PKD-Skip vs PKD-Last, and the bytes teacher ranks send."""
from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from . import save  # noqa: E402

HARD, KD = "#999999", "#4C72B0"


def plot_distill_vs_hard(curves: dict, finals: dict, path, title="Distilled student vs hard labels"):
    """Left: training loss per step (mean over seeds, band = min–max) of the student trained
    on hard labels and the distilled one (its cross-entropy part, comparable). Right: held-out
    loss per seed, the two students side by side.

    ``curves``: {label: (seeds, steps) array}; ``finals``: {label: per-seed held-out losses}."""
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(12, 4.3))
    colors = dict(zip(curves, (HARD, KD, "#DD8452", "#55A868")))
    for label, c in curves.items():
        c = np.asarray(c)
        steps = np.arange(1, c.shape[1] + 1)
        ax.plot(steps, c.mean(0), color=colors[label], label=f"{label} (mean of {len(c)} seeds)")
        ax.fill_between(steps, c.min(0), c.max(0), color=colors[label], alpha=0.2)
    ax.set_xlabel("training step")
    ax.set_ylabel("cross-entropy on the labels (nats)")
    ax.set_title("training")
    ax.legend(fontsize=8)
    labels = list(finals)
    n = len(finals[labels[0]])
    w = 0.8 / len(labels)
    for i, label in enumerate(labels):
        bx.bar(np.arange(n) + (i - (len(labels) - 1) / 2) * w, finals[label], w, color=colors.get(label, KD),
               label=label)
    bx.set_xticks(np.arange(n), [f"seed {s}" for s in range(n)])
    bx.set_ylabel("held-out cross-entropy (nats)")
    bx.set_title("held-out loss after the same steps")
    bx.legend(fontsize=8)
    fig.suptitle(title)
    return save(fig, path)


def plot_sweeps(temperatures: dict, variants: dict, hard: float, path,
                title="Temperature sweep and Patient KD"):
    """Left: held-out loss against the temperature T (hard-label student as a line). Right:
    held-out loss of KD, PKD-Skip and PKD-Last (same seed, same steps).

    ``temperatures``: {T: held-out loss}; ``variants``: {label: held-out loss}."""
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(12, 4.3))
    ts = sorted(temperatures)
    ax.plot(ts, [temperatures[t] for t in ts], "o-", color=KD, label="distilled student")
    ax.axhline(hard, color=HARD, ls="--", label="hard labels only")
    ax.set_xscale("log", base=2)
    ax.set_xticks(ts, [f"{t:g}" for t in ts])
    ax.set_xlabel("temperature T (log scale)")
    ax.set_ylabel("held-out cross-entropy (nats)")
    ax.set_title("soft targets at temperature T")
    ax.legend(fontsize=8)
    labels = list(variants)
    bx.bar(labels, [variants[k] for k in labels], color=[KD, "#DD8452", "#55A868"][:len(labels)],
           label="held-out loss")
    bx.axhline(hard, color=HARD, ls="--", label="hard labels only")
    bx.set_ylim(0, max(max(variants.values()), hard) * 1.05)     # bars from zero: their heights compare
    bx.set_xlabel("the student's training objective (same seed, same steps)")
    bx.set_ylabel("held-out cross-entropy (nats)")
    bx.set_title("KD vs Patient KD (Sun et al. 2019)")
    bx.legend(fontsize=8)
    fig.suptitle(title)
    return save(fig, path)


def plot_stream_bytes(rows: dict, path, title="Bytes a teacher rank sends per student per step"):
    """Measured bytes per student per step for full logits and each top-K (bars) beside the
    formula micro-batches × b·s·(V or K) × element size (ticks). ``rows``: {label: (measured, formula)}."""
    labels = list(rows)
    x = np.arange(len(labels))
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.bar(x, [rows[k][0] / 2**10 for k in labels], color=KD, label="measured (message log)")
    ax.scatter(x, [rows[k][1] / 2**10 for k in labels], marker="_", s=900, color="k", zorder=3,
               label="formula")
    ax.set_xticks(x, labels)
    ax.set_ylabel("bytes per student per step (KiB)")
    ax.set_title(title)
    ax.legend(fontsize=8)
    return save(fig, path)
