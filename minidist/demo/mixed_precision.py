"""Chapter: mixed precision — formats, underflow, loss scaling, fp16 vs bf16 vs fp32.

Everything shown is measured on the tiny GPT:

1. the formats' bit layouts and ranges, and ``1 + small`` in each format;
2. one micro-batch of a 128-step gradient accumulation (its loss divided by 128, as
   DeepSpeed does): how many of its fp32 gradients fp16 flushes to zero without loss
   scaling, and how many survive with it — the exponent histogram against fp16's range;
3. an fp16 run with DeepSpeed's dynamic loss scaler started too high, so it overflows,
   skips steps, backs off, and grows again after each clean window (the loss-scale trace);
4. fp32, fp16 (+ dynamic scaling) and bf16 loss curves on the same data;
5. the memory split per parameter of a mixed-precision Adam run: 2 + 2 + 12 bytes;
6. the same run under DDP and every ZeRO stage on all the ranks: each rank's model states
   equal the ZeRO formulas with K = 12, and the collectives carry 2-byte elements.
"""
from __future__ import annotations

import functools

import numpy as np

from .. import distributed as dist
from ..training.data import TextDataset
from ..device import Device
from ..model import GPT, GPTConfig
from ..optim import Adam
from ..precision import (
    MixedPrecision,
    MixedPrecisionStep,
    StaticLossScaler,
    autocast,
    format_table_text,
    from_config,
    lost_gradient_mass,
    precision_loss_example,
)
from ..plotting.precision import plot_format_layouts, plot_gradient_exponent_histogram, plot_loss_curves, plot_loss_scale_trace
from ..plotting.zero import plot_zero_memory
from .jobs import run_jobs
from .zero import STRATEGIES, measure

TITLE = "Mixed precision"

# fp16 section of a DeepSpeed config whose first scale is too large on purpose
FP16_SECTION = {"enabled": True, "initial_scale_power": 24, "loss_scale_window": 20, "hysteresis": 2}


# Read on first use, not at import: importing the demo must not read the corpus. The cache
# makes every caller (and every in-process rank, a thread) share one dataset, which is safe
# because a TextDataset is never written after it is built (get_batch makes its own generator).
@functools.cache
def data() -> TextDataset:
    """The chapter's text: windows of 16 characters of the shipped corpus."""
    return TextDataset(seq_len=16)


def model_config() -> GPTConfig:
    """The chapter's tiny GPT, sized to :func:`data`'s vocabulary."""
    return GPTConfig(block_size=16, vocab_size=data().vocab_size, n_layer=2, n_head=2, n_embd=32)


def train(dtype: str | None, steps: int = 100, fp16_section: dict | None = None, seed: int = 1,
          batch: int = 8, lr: float = 1e-3) -> dict:
    """Train the tiny GPT in fp32 (``dtype=None``), "fp16" or "bf16"; losses and scaler history."""
    model = GPT(model_config(), seed=seed)
    opt = Adam(model.parameters(), lr=lr)
    mp = None
    if dtype is not None:
        scaler = from_config(fp16_section) if dtype == "fp16" and fp16_section else None
        mp = MixedPrecision(model, opt, dtype, scaler=scaler)
    losses = []
    for step in range(steps):
        x, y = data().get_batch(batch, step, seed)
        with autocast(dtype):
            _, loss = model(x, y)
        if mp is None:
            loss.backward()
            opt.step()
        else:
            with np.errstate(over="ignore", invalid="ignore"):   # inf/NaN is what step() detects
                mp.scale_loss(loss).backward()
            mp.step()                      # skipped (on every rank) if a gradient overflowed
        opt.zero_grad()
        losses.append(float(loss.data))
    return {"losses": losses, "history": [] if mp is None else mp.history,
            "skipped": [h.step for h in (mp.history if mp else []) if h.skipped]}


def micro_batch_gradients(dtype: str | None, scale: float = 1.0, accumulation: int = 128, batch: int = 16,
                          seed: int = 3) -> list:
    """Parameter gradients of one micro-batch whose loss is divided by ``accumulation``,
    unscaled again (÷ ``scale``) — fp32 reference when ``dtype`` is None."""
    model = GPT(model_config(), seed=0)
    x, y = data().get_batch(batch, seed)
    if dtype is None:
        _, loss = model(x, y)
        (loss * (1.0 / accumulation)).backward()
        return [p.grad.copy() for p in model.parameters()]
    mp = MixedPrecision(model, Adam(model.parameters()), dtype, scaler=StaticLossScaler(scale))
    with autocast(dtype):
        _, loss = model(x, y)
    mp.scale_loss(loss * (1.0 / accumulation)).backward()
    mp.round_gradients()                   # gradients held in fp16/bf16
    return [p.grad / np.float32(scale) for p in model.parameters()]


def underflow_table(scale: float = 2.0 ** 12) -> dict:
    """What fp16 without scaling, fp16 with ``scale`` and bf16 lose of the fp32 gradients."""
    ref = micro_batch_gradients(None)
    rows = {"fp16, no loss scaling": lost_gradient_mass(ref, micro_batch_gradients("fp16", 1.0)),
            f"fp16, loss scale 2^{int(np.log2(scale))}": lost_gradient_mass(ref, micro_batch_gradients("fp16", scale)),
            "bf16, no loss scaling": lost_gradient_mass(ref, micro_batch_gradients("bf16", 1.0))}
    return {"reference": ref, "rows": rows, "scale": scale}


def memory_split(dtype: str = "fp16") -> dict:
    """Bytes per parameter by category, measured on a device after one mixed-precision step."""
    dev = Device()
    with dev:
        model = GPT(model_config(), seed=0)
        opt = Adam(model.parameters())
        mp = MixedPrecision(model, opt, dtype)
        x, y = data().get_batch(2, 0)
        with autocast(dtype):
            _, loss = model(x, y)
        mp.scale_loss(loss).backward()
        held = dict(dev.memory.current)      # after backward: weights, grads and states all live
        mp.step()
        opt.zero_grad()
    n = model.num_parameters()
    return {"n_params": n, **{c: held[c] / n for c in ("parameters", "gradients", "optimizer_states")}}


def zero_mixed(comm) -> dict:
    """One fp16 step of each strategy of the ZeRO chapter on every rank (a collective):
    measured model states and bytes sent beside the formulas with K = 12."""
    fp16 = {"enabled": True, "initial_scale_power": 8}
    return {name: measure(comm, zero, fp16=fp16) for name, zero in STRATEGIES.items()}


# the loss-curve runs: label → (dtype, fp16 section)
RUNS = {"fp32": (None, None), "fp16 + dynamic loss scaling": ("fp16", FP16_SECTION), "bf16": ("bf16", None)}


def loss_curve_runs(comm) -> dict | None:
    """The runs of :data:`RUNS`, spread over the ranks other than rank 0 (which meanwhile
    measures the rest of the chapter alone); every run on rank 0, None on the others."""
    size, rank = (1, 0) if comm is None else (comm.size, comm.rank)
    labels = [label for i, label in enumerate(RUNS) if (i + 1) % size == rank]
    mine = dict(zip(labels, run_jobs([(functools.partial(train, RUNS[label][0], fp16_section=RUNS[label][1]),)
                                      for label in labels])))
    if size == 1:
        return mine
    # why: rank 0 prints the table and draws the curves of every run
    gathered = dist.gather_object(comm, mine)
    if rank != 0:
        return None
    runs = {label: r for part in gathered for label, r in part.items()}
    return {label: dict(runs[label], history=[MixedPrecisionStep(*h) for h in runs[label]["history"]])
            for label in RUNS}        # JSON carried the steps as lists


def run(comm, out_dir) -> dict:
    zero_rows = zero_mixed(comm) if comm is not None else None
    if comm is None or comm.rank == 0:
        under, mem = underflow_table(), memory_split()
    runs = loss_curve_runs(comm)
    if comm is not None and comm.rank != 0:
        return {}
    print(format_table_text(("fp32", "fp16", "bf16", "fp8_e4m3", "fp8_e5m2")))
    print()
    for name in ("fp32", "fp16", "bf16"):
        print(precision_loss_example(name).explanation)

    print("\nOne micro-batch of a 128-step gradient accumulation (loss ÷ 128), gradients vs fp32:")
    print(f"{'':<26}{'flushed to 0':>14}{'share of Σ|g| lost':>20}")
    for label, r in under["rows"].items():
        print(f"{label:<26}{r.fraction:>13.2%} {r.mass:>19.2e}")

    fp16 = runs["fp16 + dynamic loss scaling"]
    print(f"\nfp16 run, DeepSpeed fp16 section {FP16_SECTION}: {len(fp16['skipped'])} steps skipped "
          f"(overflow) at {fp16['skipped']}; final scale 2^{np.log2(fp16['history'][-1].scale):.0f}.\n"
          f"Each skipped step is a step not taken: fp16 trails by about that many steps.")
    print(f"{'run':<30}{'mean loss, last 20 steps':>26}")
    finals = {label: float(np.mean(r["losses"][-20:])) for label, r in runs.items()}
    for label, value in finals.items():
        print(f"{label:<30}{value:>26.4f}")

    print(f"\nMemory per parameter, mixed-precision Adam ({mem['n_params']:,} parameters, measured):")
    for c, formula in (("parameters", "2  fp16 weights"), ("gradients", "2  fp16 gradients"),
                       ("optimizer_states", "12 fp32 master 4 + Adam m 4 + v 4 (K = 12)")):
        print(f"  {c:<18}{mem[c]:>6.2f} B   {formula}")

    zero_table = {}
    if zero_rows is not None:
        psi = next(iter(zero_rows.values()))["n_params"]
        print(f"\nfp16 + Adam under data parallelism, {comm.size} ranks, Ψ = {psi:,}: bytes per rank at the step "
              f"(formula: 2Ψ/N_p + 2Ψ/N_g + 12Ψ/N_os, K = 12)")
        print(f"{'strategy':<18}{'params':>9}{'grads':>9}{'optim':>9}{'host':>9}{'total':>9}{'formula':>9}"
              f"{'sent/step':>11}{'formula':>9}")
        for name, r in zero_rows.items():
            m, f = r["measured"], r["formula"]
            print(f"{name:<18}{m['parameters']:>9}{m['gradients']:>9}{m['optimizer_states']:>9}{m['host']:>9}"
                  f"{m['total']:>9}{f['model_states']['total']:>9.0f}{r['bytes_sent']:>11}"
                  f"{f['bytes_sent_per_step']:>9.0f}")
            zero_table[name] = {"measured": m, "formula_total": f["model_states"]["total"],
                                "bytes_sent": r["bytes_sent"], "formula_bytes": f["bytes_sent_per_step"]}

    paths = [
        plot_format_layouts(out_dir / "04_format_layouts.png"),
        plot_gradient_exponent_histogram(under["reference"], out_dir / "04_gradient_exponents.png",
                                         formats=("fp16",), scale=under["scale"]),
        plot_loss_scale_trace(fp16["history"], out_dir / "04_loss_scale_trace.png"),
        plot_loss_curves({label: (r["losses"], r["skipped"]) for label, r in runs.items()},
                         out_dir / "04_loss_curves.png"),
    ]
    if zero_table:
        paths.append(plot_zero_memory(zero_table, out_dir / "04_zero_mixed_memory.png",
                                      title=f"fp16 mixed precision (K = 12): model states and traffic per rank, "
                                            f"{comm.size} ranks"))
    print("figures: " + ", ".join(p.name for p in paths))
    return {"underflow": {k: r._asdict() for k, r in under["rows"].items()}, "final_losses": finals,
            "skipped": fp16["skipped"], "memory_per_param": mem, "zero": zero_table,
            "figures": [str(p) for p in paths]}
