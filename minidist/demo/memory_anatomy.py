"""Chapter: anatomy of training memory.

One training step of a tiny GPT on one simulated device, with every byte attributed to
the four components of the source notes — parameters (参数), gradients (梯度),
activations / intermediate results (中间结果) and optimizer states (优化器) — plus the
check that the FLOPs counted match 6·N·D plus attention.
"""
from __future__ import annotations


from ..defaults import DEFAULT_DEVICE
from ..device import Device
from ..memory import CATEGORIES
from ..model import GPT, GPTConfig
from ..optim import AdamW
from ..training.data import TextDataset
from ..plotting.memory import plot_memory_bars, plot_memory_timeline

TITLE = "Anatomy of training memory"


def measure_step(cfg: GPTConfig, batch: int, seq: int, seed: int = 0) -> dict:
    """Run one step (forward, backward, AdamW step) and return the device plus marks."""
    dev = Device(DEFAULT_DEVICE)
    data = TextDataset(seq_len=seq)
    x, y = data.get_batch(batch, 0, seed)
    with dev:
        model = GPT(cfg, seed=seed)
        opt = AdamW(model.parameters())
        marks = [(len(dev.memory.timeline), "forward")]
        _, loss = model(x, y)
        marks.append((len(dev.memory.timeline), "backward"))
        loss.backward()
        marks.append((len(dev.memory.timeline), "optimizer step"))
        opt.step()
        peak = dict(dev.memory.peak_by_category)
        marks.append((len(dev.memory.timeline), "zero_grad"))   # gradients are still held here
        opt.zero_grad()
    return {"device": dev, "model": model, "marks": marks, "peak_by_category": peak,
            "n_params": model.num_parameters(), "tokens": batch * seq}


def run(comm, out_dir) -> dict:
    if comm is not None and comm.rank != 0:
        return {}
    cfg = GPTConfig(block_size=64, vocab_size=TextDataset(seq_len=64).vocab_size, n_layer=4, n_head=4, n_embd=64)
    r = measure_step(cfg, batch=8, seq=64)
    dev, n = r["device"], r["n_params"]
    print(f"GPT with {n:,} parameters ({cfg.n_layer} layers, width {cfg.n_embd}), batch 8 × 64 tokens, AdamW, fp32")
    times, per = dev.memory.curves()
    print(f"{'category':<18}{'at the peak':>13}{'most held':>12}{'bytes/param':>13}   expected")
    formula = {"parameters": "4 (fp32 weights)", "gradients": "4 (fp32 grads)",
               "optimizer_states": "8 (Adam m and v)", "activations": "∝ batch·seq·layers"}
    most = {}
    for c in CATEGORIES:
        b, most[c] = r["peak_by_category"][c], int(per[c].max())
        if most[c] or c in formula:
            print(f"{c:<18}{b / 2**20:>11.2f} M{most[c] / 2**20:>10.2f} M{most[c] / n:>13.2f}   {formula.get(c, '')}")
    print(f"peak {dev.memory.peak / 2**20:.2f} MiB, at the end of forward: activations dominate a small model")
    # the moments of a step, as stacked bars
    moments = {}
    for (idx, label) in r["marks"]:
        moments[f"before {label}"] = {c: int(per[c][idx]) for c in CATEGORIES}
    paths = [
        plot_memory_timeline(dev.memory, out_dir / "01_memory_timeline.png",
                             "Memory of one training step of a 4-layer GPT (one rank)", r["marks"]),
        plot_memory_bars(moments, out_dir / "01_memory_moments.png",
                         "What the rank holds at each moment of the step"),
    ]
    six_nd = 6 * n * r["tokens"] + 12 * cfg.n_layer * cfg.n_embd * 64 * r["tokens"]
    print(f"FLOPs counted {dev.flops / 1e6:.1f} M vs 6·N·D + attention {six_nd / 1e6:.1f} M "
          f"({dev.flops / six_nd:.3f}×); simulated step time {dev.clock.time * 1e6:.1f} µs on {dev.spec.name}")
    print("figures: " + ", ".join(p.name for p in paths))
    return {"n_params": n, "peak_by_category": r["peak_by_category"], "most_held": most, "flops": dev.flops,
            "flops_formula": six_nd, "figures": [str(p) for p in paths]}
