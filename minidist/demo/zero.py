"""Chapter: data parallel and ZeRO.

On 4 ranks, one training step of the same tiny GPT with each strategy — DDP, ZeRO-1,
ZeRO-2, ZeRO-3 and ZeRO-3 with the optimizer offloaded — measured on the simulated devices:
per-rank model states next to the ZeRO formulas (Rajbhandari et al. 2020, Figure 1), bytes
moved per step next to 2(p−1)/p·Ψ and 3(p−1)/p·Ψ, a ZeRO-3 step's timeline (all-gathers
prefetched on the comm stream while the previous layer computes, reduce-scatters in
backward) also written as a Perfetto trace, and a device too small for DDP on which
ZeRO-3 still trains. Every run uses a fresh simulated device on every rank.
"""
from __future__ import annotations

import contextlib
import pathlib

from .. import distributed as dist
from ..defaults import (DDP, DEFAULT_DEVICE, STAGE3_PREFETCH_BUCKET_SIZE, STRATEGY_LABELS, ZERO1, ZERO2, ZERO3,
                        ZERO_STAGES)
from ..device import Device, export_chrome_trace
from ..memory import OutOfMemoryError
from ..report import formulas
from ..training.trainer import Trainer
from ..plotting.zero import plot_step_timeline, plot_zero_memory

TITLE = "Data parallel and ZeRO"

MODEL = {"n_layer": 4, "n_embd": 32, "n_head": 4, "block_size": 8}


def zero_section(strategy: str, **keys) -> dict:
    """The ``zero_optimization`` section that selects ``strategy`` ("ddp", "zero1".."zero3")."""
    return {"stage": ZERO_STAGES[strategy], **keys}


DDP_LABEL, ZERO3_LABEL = STRATEGY_LABELS[DDP], STRATEGY_LABELS[ZERO3]
PREFETCH = {"overlap_comm": True, "stage3_prefetch_bucket_size": 10_000}
# A bucket of about one block (12,704 elements, below): backward fills several buckets and
# ZeRO-2 reduce-scatters each while the next block's backward runs. DeepSpeed's default,
# 5e8 elements, makes this toy model one bucket, reduced only after backward: overlap_comm
# would then change nothing.
OVERLAP = {"overlap_comm": True, "reduce_bucket_size": 13_000}
STRATEGIES = {                      # the label printed -> the config's zero_optimization section
    DDP_LABEL: zero_section(DDP),
    STRATEGY_LABELS[ZERO1]: zero_section(ZERO1),
    STRATEGY_LABELS[ZERO2]: zero_section(ZERO2, **OVERLAP),
    ZERO3_LABEL: zero_section(ZERO3, **PREFETCH),
    ZERO3_LABEL + " + offload": zero_section(ZERO3, **PREFETCH, offload_optimizer={"device": "cpu"}),
}
# A block of MODEL has 12,704 elements: a prefetch budget below that fetches exactly one block
# ahead (DeepSpeed's rule lets the last unit overshoot), so the timeline shows units one by one.
# DeepSpeed's default budget, 5e7 elements, would fetch this whole toy model at once.
PREFETCH_BUDGETS = {"0 (off)": 0, "10,000 (one block)": 10_000, "5e7 (default)": STAGE3_PREFETCH_BUCKET_SIZE}
DEVICE = {"preset": DEFAULT_DEVICE, "flops": 5e9}   # a slow toy device: compute and messages comparable


def config(zero: dict, device=DEVICE, **extra) -> dict:
    """The chapter's config for one strategy; ``extra``: more sections (``fp16={...}``)."""
    return {"model": MODEL, "data": {"dataset": "copy", "n_digits": 3, "seq_len": 7},
            "train_micro_batch_size_per_gpu": 2, "steps": 1, "optimizer": {"type": "Adam"},
            "zero_optimization": zero, "device": device, **extra}


@contextlib.contextmanager
def fresh_device(comm, spec):
    """Run the ``with`` block with a new simulated device on this rank (its own memory and clock)."""
    old = comm.device
    comm.device = Device(spec, rank=comm.rank)
    try:
        with comm.device:
            yield comm.device
    finally:
        comm.device = old


def measure(comm, zero: dict, device=DEVICE, **extra) -> dict:
    """One step of one strategy on this rank: measured model states, bytes, peak, formulas."""
    with fresh_device(comm, device) as dev:
        t = Trainer(config(zero, device, **extra), comm)
        t.train_step(0)
        return {"measured": dict(t.strategy.model_states), "bytes_sent": t.history[0]["bytes_sent"],
                "peak": dev.memory.peak, "sim_time": t.history[0]["sim_time"], "formula": formulas(t),
                "n_params": t.n_params, "device": dev,
                "parameters_peak": peak_of(dev, "parameters", getattr(t.strategy, "partitioned_at", 0))}


def peak_of(dev, category: str, start: int = 0) -> int:
    """The most bytes of ``category`` held from timeline row ``start`` on (ZeRO-3: after partitioning)."""
    level, peak = 0, 0
    for i, (_, c, delta, _) in enumerate(dev.memory.timeline):
        if c == category:
            level += delta
            if i >= start:
                peak = max(peak, level)
    return peak


def out_of_memory(comm, capacity: float) -> dict:
    """DDP and ZeRO-3 on a device of ``capacity`` bytes: which one fits?"""
    spec = {**DEVICE, "memory": capacity}
    out = {}
    for name in (DDP_LABEL, ZERO3_LABEL):
        try:
            out[name] = f"fits (peak {measure(comm, STRATEGIES[name], spec)['peak'] / 2**10:.0f} KiB)"
        except OutOfMemoryError as e:      # every rank holds the same bytes: all fail at the same point
            out[name] = "out of memory: " + oom_summary(e)
    return out


def oom_summary(e: OutOfMemoryError) -> str:
    """The error's first clause — what it tried to allocate, for which tensor, with how much in
    use — without the breakdown by category and the advice that follow (never cut mid-name)."""
    return str(e).split(" [")[0]


def run(comm, out_dir) -> dict:
    out_dir = pathlib.Path(out_dir)
    if comm.rank == 0:
        out_dir.mkdir(parents=True, exist_ok=True)
    rows = {name: measure(comm, zero) for name, zero in STRATEGIES.items()}
    peaks = {k: v["peak"] for k, v in rows.items()}
    capacity = (peaks[DDP_LABEL] + peaks[ZERO3_LABEL]) / 2         # between the two measured peaks
    oom = out_of_memory(comm, capacity)
    z3 = rows[ZERO3_LABEL]["device"]
    budgets = {label: measure(comm, zero_section(ZERO3, overlap_comm=True, stage3_prefetch_bucket_size=size))
               for label, size in PREFETCH_BUDGETS.items()}
    no_prefetch = budgets["0 (off)"]
    result = {k: {kk: vv for kk, vv in v.items() if kk != "device"} for k, v in rows.items()}
    result["out_of_memory"] = oom
    result["zero3_step_time"] = {"prefetch": rows[ZERO3_LABEL]["sim_time"], "no_prefetch": no_prefetch["sim_time"]}
    # why: the Perfetto trace shows every rank's streams side by side; rank 0 writes it
    z3_events = dist.gather_object(comm, z3.trace.events)
    if comm.rank != 0:
        return result
    psi = rows[DDP_LABEL]["n_params"]
    print(f"GPT with Ψ = {psi:,} parameters (fp32, Adam: K = 8), {comm.size} ranks, one step")
    print(f"{'strategy':<18}{'params':>9}{'grads':>9}{'optim':>9}{'host':>9}{'total':>9}{'formula':>9}"
          f"{'sent/step':>11}{'formula':>9}   (bytes per rank)")
    fig_rows = {}
    for name, r in rows.items():
        m, f = r["measured"], r["formula"]
        print(f"{name:<18}{m['parameters']:>9}{m['gradients']:>9}{m['optimizer_states']:>9}{m['host']:>9}"
              f"{m['total']:>9}{f['model_states']['total']:>9.0f}{r['bytes_sent']:>11}{f['bytes_sent_per_step']:>9.0f}")
        fig_rows[name] = {"measured": m, "formula_total": f["model_states"]["total"], "bytes_sent": r["bytes_sent"],
                          "formula_bytes": f["bytes_sent_per_step"]}
    print(f"device of {capacity / 2**10:.0f} KiB:", "; ".join(f"{k}: {v}" for k, v in oom.items()))
    t = result["zero3_step_time"]
    print(f"ZeRO-3 step: {t['prefetch'] * 1e6:.1f} µs with prefetch, {t['no_prefetch'] * 1e6:.1f} µs without")
    print("ZeRO-3 prefetch budget (stage3_prefetch_bucket_size, elements): more budget, more parameters held at once")
    for label, r in budgets.items():
        print(f"  {label:<20} peak gathered + shard parameters {r['parameters_peak'] / 2**10:7.1f} KiB, "
              f"step {r['sim_time'] * 1e6:7.1f} µs")
    print("  once the next unit's gather hides behind this unit's compute, a larger budget only costs memory")
    result["prefetch_budgets"] = {k: {"parameters_peak": r["parameters_peak"], "sim_time": r["sim_time"]}
                                  for k, r in budgets.items()}
    plot_zero_memory(fig_rows, out_dir / "03_zero_memory.png", capacity=capacity,
                     title=f"Per-rank model states and traffic, {comm.size} ranks")
    plot_step_timeline(z3.trace.events, out_dir / "03_zero3_timeline.png",
                       title="One ZeRO-3 step on rank 0: prefetched all-gathers, reduce-scatters in backward")
    export_chrome_trace(z3_events, out_dir / "03_zero3_trace.json")      # every rank's streams
    result["files"] = [str(out_dir / n) for n in ("03_zero_memory.png", "03_zero3_timeline.png", "03_zero3_trace.json")]
    return result

