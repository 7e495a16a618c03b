"""Figures of the compression chapter: held-out loss per quantization variant against bits,
the weight errors per scheme, held-out loss per pruning criterion against sparsity, and the
bytes and FLOPs each compression saves (measured, beside the formula).

Every number comes from :mod:`minidist.compression` runs (several seeds: the mean, whiskers
from the smallest to the largest seed); none is typed in here.
"""
from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from . import save  # noqa: E402

COLORS = ["#4C72B0", "#DD8452", "#55A868", "#C44E52", "#8172B3", "#937860", "#DA8BC3", "#8C8C8C"]
MARKERS = ["o", "s", "^", "D", "v", "P", "X", "*"]
BASE = "#333333"


def _seeds(n_seeds: int) -> str:
    """What a suptitle says of the seeds: their number, and what the whiskers span when there are some."""
    return "1 seed" if n_seeds == 1 else f"{n_seeds} seeds; whiskers: smallest to largest seed"


def _errorbar(ax, x, stats: list, label: str, i: int, **kw):
    mean = np.array([st["mean"] for st in stats])
    err = [mean - [st["min"] for st in stats], np.array([st["max"] for st in stats]) - mean]
    ax.errorbar(x, mean, yerr=err, marker=MARKERS[i % 8], color=COLORS[i % 8], capsize=3, label=label, **kw)


def _delta_bars(ax, labels, stats: list, colors, unit: float):
    """Bars of per-seed differences (mean; whiskers: smallest to largest seed), in ``unit``s."""
    mean = np.array([st["mean"] for st in stats]) / unit
    err = np.array([[m - st["min"] / unit for m, st in zip(mean, stats)],
                    [st["max"] / unit - m for m, st in zip(mean, stats)]])
    ax.bar(range(len(labels)), mean, color=colors, yerr=err, capsize=4)
    ax.axhline(0, color=BASE, lw=1, ls="--")
    ax.set_xticks(range(len(labels)), labels, rotation=20, ha="right", fontsize=8)


def plot_quantization_accuracy(delta: dict, fp32: dict, bits, n_seeds: int, path,
                               title="Held-out loss of the quantized GPT"):
    """Every variant's held-out loss minus the fp32 model's of the same seed (mean, whiskers
    from the smallest to the largest seed). Left: weight-only schemes against bits (symlog
    y), NF4 at its 4 bits. Middle: W8A8, static (min-max, percentile) and dynamic. Right: QAT
    and post-training quantization of the dense model trained as many extra steps, minus that
    dense model's loss.

    ``delta``: {scheme: {bits: stats}, "NF4 (double quant)": stats, "W8A8 …": stats,
    "qat": {label: stats}}, stats = {"mean", "min", "max"}; ``fp32``: the fp32 loss's stats."""
    fig, (ax, bx, cx) = plt.subplots(1, 3, figsize=(16, 4.8), gridspec_kw={"width_ratios": [2.2, 1, 1]})
    bits = sorted(bits)
    schemes = [k for k, v in delta.items() if isinstance(v, dict) and "mean" not in v and k != "qat"]
    for i, label in enumerate(schemes):
        offset = (i - (len(schemes) - 1) / 2) * 0.06
        _errorbar(ax, [b + offset for b in bits], [delta[label][b] for b in bits], label, i)
    nf4 = delta["NF4 (double quant)"]
    _errorbar(ax, [4], [nf4], "NF4 + double quant (4.127 bits)", 7, ms=12, ls="none", zorder=5)
    ax.axhline(0, color=BASE, lw=1, ls="--", label=f"fp32 (held-out loss {fp32['mean']:.3f})")
    ax.set_yscale("symlog", linthresh=1e-3)
    ax.set_xticks(bits, [str(b) for b in bits])
    ax.set_xlabel("bits per weight (codes; scales extra)")
    ax.set_ylabel("held-out loss − fp32 model's (nats, symlog)")
    ax.set_title("weight-only post-training quantization")
    ax.legend(fontsize=7.5)
    names = [k for k in delta if k.startswith("W8A8")]
    _delta_bars(bx, [n.replace("W8A8 ", "") for n in names], [delta[n] for n in names], COLORS[:len(names)], 1e-3)
    bx.set_ylabel("held-out loss − fp32 model's (10⁻³ nats)")
    bx.set_title("W8A8: int8 weights × int8 activations")
    qat = delta["qat"]
    _delta_bars(cx, list(qat), list(qat.values()), COLORS[3:3 + len(qat)], 1e-3)
    cx.set_ylabel("held-out loss − dense model's (10⁻³ nats)")
    cx.set_title("QAT vs PTQ after the same extra steps")
    fig.suptitle(f"{title} ({_seeds(n_seeds)})")
    return save(fig, path)


def plot_quantization_errors(errors: dict, bits: int, path, title="Quantization error of the linear weights"):
    """One histogram of ``ŵ − w`` per scheme (same bins, log counts), RMSE in each legend."""
    n = len(errors)
    cols = 3
    rows = -(-n // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(13, 3.3 * rows), sharex=True, sharey=True)
    lim = max(np.abs(e).max() for e in errors.values())
    bins = np.linspace(-lim, lim, 81)
    for i, (ax, (label, e)) in enumerate(zip(axes.ravel(), errors.items())):
        rmse = float(np.sqrt(np.mean(np.square(e, dtype=np.float64))))
        ax.hist(e, bins=bins, color=COLORS[i % 8], label=f"RMSE {rmse:.2e}")
        ax.set_yscale("log")
        ax.set_title(label, fontsize=10)
        ax.legend(fontsize=8)
        ax.set_xlabel("ŵ − w (weight units)")
        ax.set_ylabel("weights")
    for ax in axes.ravel()[n:]:
        ax.axis("off")
    fig.suptitle(f"{title}, {bits}-bit codes (one trained model)")
    return save(fig, path)


def plot_pruning_accuracy(one_shot: dict, trained: dict, base: dict, sparsities, n_seeds: int, extra_steps: int,
                          path, title="Held-out loss of the pruned GPT"):
    """Held-out loss minus the trained dense model's (same seed), against the fraction of the
    linear layers' weights removed (structured: heads and channels, which removes the same
    fraction of those weights). Left: pruned without retraining, per criterion. Right: with
    ``extra_steps`` more training steps (L1 then magnitude; iterative prune + fine-tune)
    beside the dense model trained as long.

    ``one_shot``/``trained``: {label: {fraction: {"mean", "min", "max"}}} of the per-seed
    differences (``trained["dense"]``: one such entry); ``base``: the dense model's loss."""
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(13, 4.8), sharey=True)
    def curve(a, stats, label, i, k, n):
        xs = sorted(stats)
        _errorbar(a, [x + (k - (n - 1) / 2) * 0.008 for x in xs], [stats[x] for x in xs], label, i)
    for k, (label, stats) in enumerate(one_shot.items()):
        curve(ax, stats, label, k, k, len(one_shot))
    ax.set_title("pruned, no retraining")
    for k, label in enumerate(("L1 then magnitude, global", "iterative magnitude + fine-tune")):
        curve(bx, trained[label], label, k + 5, k, 3)
    curve(bx, one_shot["magnitude, global"], "magnitude, global (no retraining)", 1, 2, 3)
    bx.axhline(trained["dense"]["mean"], color=BASE, ls=":", lw=1.2, label=f"dense, +{extra_steps} steps")
    bx.set_title(f"with {extra_steps} more training steps")
    for a in (ax, bx):
        a.axhline(0, color=BASE, ls="--", lw=1, label=f"dense (held-out loss {base['mean']:.3f})")
        a.set_yscale("symlog", linthresh=1e-2)
        a.set_xlabel("fraction of the linear layers' weights removed")
        a.set_xticks(sorted(sparsities), [f"{s:.0%}" for s in sorted(sparsities)])
        a.legend(fontsize=7.5)
    ax.set_ylabel("held-out loss − dense model's (nats, symlog)")
    fig.suptitle(f"{title} ({_seeds(n_seeds)})")
    return save(fig, path)


def plot_savings(costs: dict, formula_bytes: dict, formula_matmul: dict, csr: dict, path,
                 title="What each compression saves, measured"):
    """Left: parameter bytes on the simulated device per variant (bars) and the formula
    (ticks). Middle: matmul FLOPs of one forward (bars) and the formula (ticks), and the
    simulated compute time (dots, right axis). Right: dense vs CSR bytes of the pruned
    linear weights against sparsity."""
    fig, (ax, bx, cx) = plt.subplots(1, 3, figsize=(17, 5))
    labels = list(costs)
    x = np.arange(len(labels))
    base = costs[labels[0]]
    ax.bar(x, [costs[k].parameter_bytes / 2**10 for k in labels], color=COLORS[0], label="measured (device memory)")
    fx = [i for i, k in enumerate(labels) if k in formula_bytes]
    ax.scatter(fx, [formula_bytes[labels[i]] / 2**10 for i in fx], marker="_", s=700, color="k", zorder=3,
               label="formula")
    ax.set_ylabel("parameter bytes (KiB)")
    ax.set_title("weights held")
    bx.bar(x, [costs[k].matmul_flops / 1e6 for k in labels], color=COLORS[2], label="measured matmul FLOPs")
    fx = [i for i, k in enumerate(labels) if k in formula_matmul]
    bx.scatter(fx, [formula_matmul[labels[i]] / 1e6 for i in fx], marker="_", s=700, color="k", zorder=3,
               label="formula")
    tx = bx.twinx()
    tx.plot(x, [costs[k].time / base.time for k in labels], "o", color=COLORS[3], label="compute time (right)")
    tx.set_ylabel("simulated compute time ÷ dense fp32's")
    tx.set_ylim(0, 1.45)
    bx.set_ylim(0, 1.45 * max(costs[k].matmul_flops for k in labels) / 1e6)
    ax.set_ylim(0, 1.3 * max(costs[k].parameter_bytes for k in labels) / 2**10)
    bx.set_ylabel("matmul FLOPs per forward (millions)")
    bx.set_title("one forward of a batch")
    for a in (ax, bx):
        a.set_xticks(x, labels, rotation=30, ha="right", fontsize=8)
    ax.legend(fontsize=8)
    handles = bx.get_legend_handles_labels()[0] + tx.get_legend_handles_labels()[0]
    bx.legend(handles, [h.get_label() for h in handles], fontsize=8, loc="upper right")
    s = sorted(csr)
    cx.plot([v * 100 for v in s], [csr[v][0] / 2**10 for v in s], "o-", color=BASE, label="dense (zeros stored)")
    cx.plot([v * 100 for v in s], [csr[v][1] / 2**10 for v in s], "s-", color=COLORS[1],
            label="CSR: 4-byte value + 4-byte index per weight kept")
    cx.set_xlabel("unstructured sparsity of the linear weights (%)")
    cx.set_ylabel("bytes of the linear weights (KiB)")
    cx.set_title("unstructured: smaller only in a sparse format")
    cx.legend(fontsize=8)
    fig.suptitle(title)
    return save(fig, path)
