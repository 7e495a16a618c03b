"""Figures for number formats and loss scaling.

* :func:`plot_format_layouts` — the bit layout of each format as coloured boxes;
* :func:`plot_format_ranges` — each format's subnormal and normal range on a log2 axis;
* :func:`plot_loss_scale_trace` — a loss scaler's history: the scale per step, overflows marked;
* :func:`plot_gradient_exponent_histogram` — where gradients' exponents fall against fp16 /
  bf16's ranges, with and without a loss scale (why fp16 needs scaling and bf16 does not);
* :func:`plot_loss_curves` — training loss of several runs (fp32 / fp16 / bf16) side by side.

Every function writes a PNG (or whatever ``path``'s suffix says) and returns ``path``.
All numbers come from :mod:`minidist.precision`, none are typed in here.
"""
from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from ..numerics.formats import FORMATS, get_format
from . import save  # noqa: E402

_SIGN, _EXP, _MANT = "#d62728", "#1f77b4", "#2ca02c"
_LAYOUT_FORMATS = ("fp32", "fp16", "bf16", "fp8_e4m3", "fp8_e5m2")


def plot_format_layouts(path, formats=_LAYOUT_FORMATS):
    """One row per format: 1 sign box, E exponent boxes, M mantissa boxes."""
    fmts = [get_format(f) for f in formats]
    fig, ax = plt.subplots(figsize=(12, 0.8 * len(fmts) + 1.4))
    for row, f in enumerate(fmts):
        y = len(fmts) - 1 - row
        colours = [_SIGN] + [_EXP] * f.exponent_bits + [_MANT] * f.mantissa_bits
        for i, c in enumerate(colours):
            ax.add_patch(plt.Rectangle((i, y + 0.1), 0.95, 0.8, color=c, alpha=0.85))
        ax.text(-0.5, y + 0.5, f.name, ha="right", va="center", fontsize=11)
        ax.text(f.total_bits + 0.5, y + 0.5,
                f"{f.total_bits} bits: 1 + {f.exponent_bits} + {f.mantissa_bits}, bias {f.bias}, "
                f"max {f.max_finite:.4g}", va="center", fontsize=9)
    ax.set_xlim(-6, 50)
    ax.set_ylim(-0.2, len(fmts) + 0.2)
    ax.set_yticks([])
    ax.set_xlabel("bit position (most significant first)")
    ax.set_title("Bit layouts: sign | exponent (range) | mantissa (precision)")
    handles = [plt.Rectangle((0, 0), 1, 1, color=c) for c in (_SIGN, _EXP, _MANT)]
    ax.legend(handles, ["sign", "exponent", "mantissa"], loc="lower right", ncol=3)
    return save(fig, path)


def plot_format_ranges(path, formats=tuple(FORMATS)):
    """Horizontal bars on a log2 axis: subnormal range, normal range, and the max value."""
    fmts = [get_format(f) for f in formats]
    fig, ax = plt.subplots(figsize=(10, 0.7 * len(fmts) + 1.5))
    for row, f in enumerate(fmts):
        lo_sub, lo_norm = np.log2(f.smallest_subnormal), np.log2(f.smallest_normal)
        hi = np.log2(f.max_finite)
        ax.barh(row, lo_norm - lo_sub, left=lo_sub, color="#ff7f0e", alpha=0.6,
                label="subnormal range" if row == 0 else None)
        ax.barh(row, hi - lo_norm, left=lo_norm, color=_EXP, alpha=0.7,
                label="normal range" if row == 0 else None)
        ax.plot([hi], [row], "k|", markersize=18, label="max finite" if row == 0 else None)
        ax.text(hi + 2, row, f"{f.max_finite:.3g}", va="center", fontsize=8)
    ax.set_yticks(range(len(fmts)), [f.name for f in fmts])
    ax.set_xlabel("log2 |value|")
    ax.set_title("Representable magnitudes per format (log2 scale)")
    ax.legend(loc="upper left", fontsize=8)
    ax.grid(axis="x", alpha=0.3)
    return save(fig, path)


def plot_loss_scale_trace(history, path):
    """The loss scale at each step (log2 axis) with overflowed, skipped steps marked.

    ``history``: a scaler's ``history`` — (iteration, scale, overflow) tuples.
    """
    it = np.array([h[0] for h in history], dtype=float)
    scale = np.array([h[1] for h in history], dtype=float)
    over = np.array([bool(h[2]) for h in history])
    fig, ax = plt.subplots(figsize=(9, 4))
    ax.step(it, scale, where="post", label="loss scale used")
    if over.any():
        ax.plot(it[over], scale[over], "rx", label="overflow (step skipped)")
    ax.set_yscale("log", base=2)
    ax.set_xlabel("iteration")
    ax.set_ylabel("loss scale (log2 axis)")
    ax.set_title("Dynamic loss scale: back off on overflow, grow after a clean window")
    ax.legend()
    ax.grid(alpha=0.3)
    return save(fig, path)


def _pow2_label(x: float) -> str:
    """``-24 -> '2^-24'``; ``log2(65504) -> '65504 ≈ 2^16.00'``."""
    return f"2^{x:.0f}" if float(x).is_integer() else f"{2.0 ** x:.5g} ≈ 2^{x:.2f}"


def _log2_abs(grads) -> np.ndarray:
    arrays = [grads] if isinstance(grads, np.ndarray) else list(grads)
    flat = np.concatenate([np.asarray(g, dtype=np.float64).ravel() for g in arrays])
    flat = np.abs(flat[np.isfinite(flat) & (flat != 0)])
    return np.log2(flat)


def plot_gradient_exponent_histogram(grads, path, formats=("fp16", "bf16"), scale=None):
    """Histogram of log2|g| with each format's underflow / subnormal / normal / max boundaries.

    ``grads``: one array or a list of arrays (zeros and non-finite values are left out).
    ``scale``: if given, also show the gradients multiplied by this loss scale — the
    histogram slides right by log2(scale) and out of fp16's underflow zone.
    """
    e = _log2_abs(grads)
    series = [("gradients", e)]
    if scale is not None:
        series.append((f"gradients × {scale:g} (loss scale)", e + np.log2(scale)))
    lo = min(s.min() for _, s in series) if e.size else -30.0
    hi = max(s.max() for _, s in series) if e.size else 0.0
    lines = []
    for f, ls in zip((get_format(n) for n in formats), ("--", ":", "-.", "-")):
        lines += [(np.log2(f.smallest_subnormal), f"{f.name} smallest subnormal (below: 0)", "#d62728", ls),
                  (np.log2(f.smallest_normal), f"{f.name} smallest normal", "#ff7f0e", ls),
                  (np.log2(f.max_finite), f"{f.name} max (above: overflow)", "#1f77b4", ls)]
    # Widen the axis to show boundaries near the data; farther ones only get a legend entry.
    near = [x for x, *_ in lines if lo - 40 <= x <= hi + 40]
    left, right = np.floor(min([lo, *near])) - 2, np.ceil(max([hi, *near])) + 2
    bins = np.linspace(left, right, 100)
    fig, ax = plt.subplots(figsize=(13, 4.5))
    for (label, s), colour in zip(series, ("#7f7f7f", "#9467bd")):
        ax.hist(s, bins=bins, alpha=0.55, color=colour, label=label)
    for x, what, c, ls in lines:
        if left <= x <= right:
            ax.axvline(x, color=c, linestyle=ls, label=f"{what}: {_pow2_label(x)}")
        else:
            ax.plot([], [], color=c, linestyle=ls, label=f"{what}: {_pow2_label(x)} (off the axis)")
    ax.set_xlim(left, right)
    ax.set_xlabel("log2 |gradient|")
    ax.set_ylabel("number of values")
    ax.set_title("Gradient magnitudes against number-format ranges")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    return save(fig, path)


def plot_loss_curves(curves: dict, path, title="Training loss: FP32 vs FP16 (+ loss scaling) vs BF16"):
    """One line per run: ``curves`` maps a label ("fp32", "fp16 + dynamic scaling"…) to the
    per-step losses. Overflow-skipped steps can be marked by passing ``{label: (losses,
    skipped_steps)}`` instead of a plain list."""
    fig, ax = plt.subplots(figsize=(9, 4.5))
    for (label, run), style in zip(curves.items(), ("-", "--", ":", "-.")):
        losses, skipped = run if isinstance(run, tuple) else (run, ())
        line, = ax.plot(np.arange(len(losses)), losses, style, label=label, linewidth=1.4)
        if len(skipped):
            ax.plot(skipped, np.asarray(losses)[list(skipped)], "x", color=line.get_color(),
                    label=f"{label}: skipped step (overflow)")
    ax.set_xlabel("step")
    ax.set_ylabel("training loss (nats per token)")
    ax.set_title(title)
    ax.legend()
    ax.grid(alpha=0.3)
    return save(fig, path)
