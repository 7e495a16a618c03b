"""Tokens/s of one GPT training step: minidist vs the same model in PyTorch CPU.

    OMP_NUM_THREADS=1 python benchmarks/bench_engine.py [--threads 1] [--steps 5]

Reference config: 4 layers, 256 wide, 8 heads, sequence 128, batch 8 (fp32, AdamW).
Both run in this process with the same thread count; the ratio is minidist / PyTorch.
"""
from __future__ import annotations

import argparse
import os
import time

import numpy as np

from minidist._malloc import tune_malloc


def bench_minidist(cfg, B, T, steps, warmup=1):
    from minidist.model import GPT, GPTConfig
    from minidist.optim import AdamW
    from minidist.device import Device
    model = GPT(GPTConfig(**cfg), seed=0)
    opt = AdamW(model.parameters(), lr=1e-3)
    rng = np.random.default_rng(0)
    x = rng.integers(0, cfg["vocab_size"], (B, T))
    y = rng.integers(0, cfg["vocab_size"], (B, T))
    dev = Device()
    times = []
    for i in range(warmup + steps):
        t0 = time.perf_counter()
        with dev:  # accounting on: the benchmark measures what users run
            _, loss = model(x, y)
            loss.backward()
            opt.step()
            opt.zero_grad()
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    return B * T / np.median(times), dev


def bench_torch(cfg, B, T, steps, warmup=1):
    import torch
    import torch.nn as nn
    import torch.nn.functional as F
    C, H, L, V = cfg["n_embd"], cfg["n_head"], cfg["n_layer"], cfg["vocab_size"]

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.ln_1, self.ln_2 = nn.LayerNorm(C), nn.LayerNorm(C)
            self.c_attn, self.c_proj = nn.Linear(C, 3 * C), nn.Linear(C, C)
            self.c_fc, self.mlp_proj = nn.Linear(C, 4 * C), nn.Linear(4 * C, C)

        def forward(self, x):
            Bq, Tq, _ = x.shape
            q, k, v = self.c_attn(self.ln_1(x)).split(C, dim=2)
            q, k, v = (t.view(Bq, Tq, H, C // H).transpose(1, 2) for t in (q, k, v))
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
            x = x + self.c_proj(y.transpose(1, 2).reshape(Bq, Tq, C))
            return x + self.mlp_proj(F.gelu(self.c_fc(self.ln_2(x)), approximate="tanh"))

    class GPT(nn.Module):
        def __init__(self):
            super().__init__()
            self.wte, self.wpe = nn.Embedding(V, C), nn.Embedding(T, C)
            self.h = nn.ModuleList(Block() for _ in range(L))
            self.ln_f = nn.LayerNorm(C)

        def forward(self, idx, tgt):
            x = self.wte(idx) + self.wpe(torch.arange(idx.shape[1]))
            for b in self.h:
                x = b(x)
            logits = self.ln_f(x) @ self.wte.weight.T
            return F.cross_entropy(logits.view(-1, V), tgt.view(-1))

    torch.manual_seed(0)
    model = GPT()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    x = torch.randint(0, V, (B, T))
    y = torch.randint(0, V, (B, T))
    times = []
    for i in range(warmup + steps):
        t0 = time.perf_counter()
        loss = model(x, y)
        loss.backward()
        opt.step()
        opt.zero_grad()
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    return B * T / np.median(times)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--width", type=int, default=256)
    ap.add_argument("--heads", type=int, default=8)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--threads", type=int, default=int(os.environ.get("OMP_NUM_THREADS", "1")))
    args = ap.parse_args()
    tune_malloc()  # a command owns its process: it may retune malloc; import minidist must not
    cfg = dict(n_layer=args.layers, n_embd=args.width, n_head=args.heads, block_size=args.seq, vocab_size=65)
    print(f"GPT {args.layers}L/{args.width}w/{args.heads}h, seq {args.seq}, batch {args.batch}, "
          f"{args.threads} thread(s)")
    ours, dev = bench_minidist(cfg, args.batch, args.seq, args.steps)
    print(f"minidist : {ours:10.0f} tokens/s")
    top = sorted(dev.flops_by_op.items(), key=lambda kv: -kv[1])[:5]
    print("  counted FLOPs by op (top 5): " + ", ".join(f"{k} {v / 1e9:.2f}G" for k, v in top))
    try:
        import torch
        torch.set_num_threads(args.threads)
    except ImportError:
        print("PyTorch not installed: no peer to compare with (pip install torch==2.13.0)")
        return
    theirs = bench_torch(cfg, args.batch, args.seq, args.steps)
    print(f"PyTorch  : {theirs:10.0f} tokens/s")
    print(f"ratio minidist/PyTorch = {ours / theirs:.2f}x")


if __name__ == "__main__":
    main()
