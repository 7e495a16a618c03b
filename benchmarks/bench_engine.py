"""Tokens/s of one GPT training step: minidist vs the same model in PyTorch CPU.

    python benchmarks/bench_engine.py [--threads 1] [--steps 5] [--repeats 3]

Reference config: 4 layers, 256 wide, 8 heads, sequence 128, batch 8 (fp32, AdamW).
Three runners live in this process with the same thread count — minidist with its
accounting on (what users run), PyTorch, and minidist with its accounting off
(``Device(accounting=False)``) — and a repetition times ``--steps`` rounds of one step
each, in an order that rotates every round, so that a change in the machine's load hits
all three alike. Each step is timed in wall time and in CPU time (``time.process_time``:
what the step cost, leaving out the time the process waited for a core on a busy machine).
It prints

* per repetition, tokens/s and the ratio minidist / PyTorch (> 1: minidist is faster),
  then the median and spread of the ratio over the repetitions;
* the accounting's overhead (memory tracker, FLOP counters, compute clock, trace): the
  same step with accounting on vs off, in percent;
* a profile table of one more step: CPU time per op family, every GEMM under BLAS and
  each op's own time outside its GEMMs under its family; the share of the step inside BLAS,
  of the timed step and of the same step untimed (the timers cost time of their own); and
  the limit, 6·N·D FLOPs at this machine's sgemm rate.
"""
from __future__ import annotations

import argparse
import os
import sys
import time


def parse_args(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--width", type=int, default=256)
    ap.add_argument("--heads", type=int, default=8)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--steps", type=int, default=5, help="timed steps per repetition (median taken)")
    ap.add_argument("--repeats", type=int, default=3, help="side-by-side repetitions (median and spread)")
    ap.add_argument("--threads", type=int, default=int(os.environ.get("OMP_NUM_THREADS", "1")))
    ap.add_argument("--no-profile", action="store_true", help="skip the profile table")
    return ap.parse_args(argv)


ARGS = parse_args() if __name__ == "__main__" else None
if ARGS is not None:   # BLAS reads its thread count when NumPy is first imported
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(ARGS.threads)
    # OpenBLAS's idle threads spin for 2^28 cycles (~0.1 s) after each product before they
    # sleep: with 2 threads, the second one burns a core through every elementwise op between
    # GEMMs (the step's CPU time doubles outside BLAS). 2^4 cycles: they sleep at once. An
    # explicit OPENBLAS_THREAD_TIMEOUT in the environment wins (28 measures the default).
    if ARGS.threads > 1:
        os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "4")

import numpy as np  # noqa: E402

from minidist._malloc import tune_malloc  # noqa: E402


# -- minidist ---------------------------------------------------------------------------------
def minidist_setup(cfg, B, T):
    from minidist.model import GPT, GPTConfig
    from minidist.optim import AdamW
    model = GPT(GPTConfig(**cfg), seed=0)
    opt = AdamW(model.parameters(), lr=1e-3)
    rng = np.random.default_rng(0)
    x = rng.integers(0, cfg["vocab_size"], (B, T))
    y = rng.integers(0, cfg["vocab_size"], (B, T))
    return model, opt, x, y


def minidist_step(model, opt, x, y, dev):
    with dev:
        _, loss = model(x, y)
        loss.backward()
        opt.step()
        opt.zero_grad()
    return loss


def minidist_runner(cfg, B, T, accounting=True):
    """A one-step callable (parameters placed on the device, as a trainer does), and the device."""
    from minidist.device import Device
    dev = Device(accounting=accounting)
    with dev:
        model, opt, x, y = minidist_setup(cfg, B, T)
    return (lambda: minidist_step(model, opt, x, y, dev)), dev


def one_thread_ops(step):
    """``step`` with minidist's intra-op threads off while it runs (BLAS keeps its count):
    what ``minidist.set_num_threads`` adds beyond the BLAS threads."""
    from minidist.ops import intra_op

    def run():
        saved = intra_op._STATE["threads"]
        intra_op._STATE["threads"] = 1
        try:
            return step()
        finally:
            intra_op._STATE["threads"] = saved
    return run


# -- PyTorch ----------------------------------------------------------------------------------
def torch_setup(cfg, B, T):
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
    return model, opt, torch.randint(0, V, (B, T)), torch.randint(0, V, (B, T))


def torch_runner(cfg, B, T):
    model, opt, x, y = torch_setup(cfg, B, T)

    def step():
        loss = model(x, y)
        loss.backward()
        opt.step()
        opt.zero_grad()
    return step


def side_by_side(runners: dict, steps: int) -> dict:
    """Per runner, median (wall, CPU) seconds per step, timed one step each in turn (the order
    rotating every round), so that a change in the machine's load hits all of them alike.
    CPU time (``time.process_time``: every thread of this process) leaves out the time the
    process waited for a core: on a machine others load, it is what a step costs."""
    names = list(runners)
    for name in names:
        runners[name]()                                   # warm-up: optimizer states, caches
    wall, cpu = ({name: [] for name in names} for _ in range(2))
    for i in range(steps):
        for name in names[i % len(names):] + names[:i % len(names)]:
            t0, c0 = time.perf_counter(), time.process_time()
            runners[name]()
            cpu[name].append(time.process_time() - c0)
            wall[name].append(time.perf_counter() - t0)
    return {name: (float(np.median(wall[name])), float(np.median(cpu[name]))) for name in names}


# -- profile ----------------------------------------------------------------------------------
FAMILIES = {
    "linear": "linear (bias)", "matmul": "linear (bias)",
    "attention": "attention (mask, softmax)", "scaled_dot_product_attention": "attention (mask, softmax)",
    "softmax": "softmax", "log_softmax": "softmax",
    "layer_norm": "layernorm", "gelu": "GELU",
    "embedding": "embedding", "cross_entropy": "loss",
    "reshape": "shape (split, reshape)", "transpose": "shape (split, reshape)",
    "slice": "shape (split, reshape)", "getitem": "shape (split, reshape)",
    "concat": "shape (split, reshape)", "split": "shape (split, reshape)",
}
BLAS_LINEAR, BLAS_ATTENTION = "BLAS: linear, LM head GEMMs", "BLAS: attention GEMMs"
BLAS = (BLAS_LINEAR, BLAS_ATTENTION)
ORDER = [*BLAS, "attention (mask, softmax)", "softmax", "layernorm", "GELU", "elementwise",
         "linear (bias)", "shape (split, reshape)", "embedding", "loss", "optimizer", "accounting",
         "autograd engine, Python glue"]


def family(op_name: str) -> str:
    return FAMILIES.get(op_name.split(".")[0], "elementwise")


class OpProfiler:
    """Exclusive wall time per op family over the steps run inside ``with OpProfiler():``.

    It swaps in timed wrappers, and puts the originals back on exit: every GEMM (``np.matmul``
    as seen by :mod:`minidist.ops.linalg` and :mod:`minidist.ops.attention`), every op's
    forward (the ``minidist.functional`` names and Tensor's operators), every op's backward
    (the closure its graph node holds), the optimizer, and the accounting (the device's
    FLOP/clock/trace charge, saved-activation registry, memory tracker). A wrapper's time
    excludes the wrapped calls made inside it, so the families add up to the step.
    """

    def __init__(self, optimizer):
        self.opt = optimizer
        self.acc: dict[str, float] = {}
        self._stack: list[float] = []
        self._undo: list = []

    def timed(self, fn, fam):
        acc, stack, clock = self.acc, self._stack, time.process_time

        def wrapper(*a, **k):
            stack.append(0.0)
            t0 = clock()
            try:
                return fn(*a, **k)
            finally:
                dt = clock() - t0
                acc[fam] = acc.get(fam, 0.0) + dt - stack.pop()
                if stack:
                    stack[-1] += dt
        return wrapper

    def _patch(self, owner, name, new):
        """Set ``owner.name = new``; on exit, put back what ``owner.__dict__`` held (or nothing)."""
        self._undo.append((owner, name, owner.__dict__.get(name, _ABSENT)))
        setattr(owner, name, new)

    def __enter__(self):
        import types
        import minidist.functional as F
        from minidist import device, memory, tensor
        from minidist.ops import attention, linalg, methods
        for mod, fam in ((linalg, BLAS_LINEAR), (attention, BLAS_ATTENTION)):
            blas_np = types.ModuleType("numpy_timed_matmul")
            blas_np.__dict__.update(np.__dict__)
            blas_np.matmul = self.timed(np.matmul, fam)
            self._patch(mod, "np", blas_np)
        for name in F.__all__:
            self._patch(F, name, self.timed(getattr(F, name), family(name)))
        for name in ("add", "sub", "mul", "div", "neg", "pow", "exp", "log", "tanh", "matmul", "getitem",
                     "reshape", "split", "transpose", "sum", "mean", "max"):
            self._patch(methods, name, self.timed(getattr(methods, name), family(name)))
        node_cls, timed = tensor.Node, self.timed
        self._patch(tensor, "Node", lambda parents, backward, name, dev, keys:
                    node_cls(parents, timed(backward, family(name)), name, dev, keys))
        for cls, names in ((device.Device, ("compute", "save_for_backward", "release_saved")),
                           (memory.MemoryTracker, ("alloc", "free"))):
            for name in names:
                self._patch(cls, name, self.timed(getattr(cls, name), "accounting"))
        for name in ("step", "zero_grad"):
            self._patch(self.opt, name, self.timed(getattr(self.opt, name), "optimizer"))
        return self

    def __exit__(self, *exc):
        for owner, name, old in reversed(self._undo):
            if old is _ABSENT:
                delattr(owner, name)     # an instance attribute shadowing the class's method
            else:
                setattr(owner, name, old)
        self._undo.clear()


_ABSENT = object()


def sgemm_rate(m, k, n, reps=20) -> float:
    """FLOP/s of float32 (m×k)·(k×n) products on this machine, per CPU second (the step's
    profile is in CPU time too): the best of ``reps``."""
    rng = np.random.default_rng(0)
    a, b = rng.random((m, k), dtype=np.float32), rng.random((k, n), dtype=np.float32)
    best = float("inf")
    for _ in range(reps):
        t0 = time.process_time()
        np.matmul(a, b)
        best = min(best, time.process_time() - t0)
    return 2 * m * k * n / best


def profile_step(cfg, B, T, steps=3):
    """CPU seconds per family of one step (mean over ``steps``), the step's CPU seconds with
    the profiler's timers and without them (the same model, steps alternating), the model's
    parameter count and the matmul FLOPs of one step."""
    from minidist.device import Device
    dev = Device()
    with dev:
        model, opt, x, y = minidist_setup(cfg, B, T)
    minidist_step(model, opt, x, y, dev)                    # warm-up: optimizer states, caches
    flops0 = dev.matmul_flops
    prof, total, untimed = OpProfiler(opt), 0.0, []
    for _ in range(steps):
        with prof:
            t0 = time.process_time()
            minidist_step(model, opt, x, y, dev)
            total += (time.process_time() - t0) / steps
        t0 = time.process_time()
        minidist_step(model, opt, x, y, dev)
        untimed.append(time.process_time() - t0)
    fams = {k: v / steps for k, v in prof.acc.items()}
    fams["autograd engine, Python glue"] = total - sum(fams.values())
    n_params = sum(p.size for p in model.parameters())
    return fams, total, float(np.median(untimed)), n_params, (dev.matmul_flops - flops0) / (2 * steps)


def print_profile(cfg, B, T, ours_wall, ours_cpu):
    fams, total, untimed, n_params, mm_flops = profile_step(cfg, B, T)
    C = cfg["n_embd"]
    rate = sgemm_rate(B * T, C, 4 * C)                    # the MLP's first product: the model's typical GEMM
    flops_6nd = 6 * n_params * B * T
    print(f"\nprofile of one step, CPU time per op family (with its timers: {total * 1e3:.0f} ms; "
          f"without: {ours_cpu * 1e3:.0f} ms CPU, {ours_wall * 1e3:.0f} ms wall)")
    print(f"  {'family':30s} {'ms':>7s} {'share':>6s}")
    for fam in ORDER + sorted(set(fams) - set(ORDER)):
        if fam in fams:
            print(f"  {fam:30s} {fams[fam] * 1e3:7.1f} {fams[fam] / total:6.1%}")
    blas = sum(fams.get(f, 0.0) for f in BLAS)
    print(f"  inside BLAS {blas / total:.1%}, outside BLAS {1 - blas / total:.1%} of the step with its timers; "
          f"the step's GEMMs ran at {mm_flops / blas / 1e9:.1f} GFLOP/s ({mm_flops / 1e9:.1f} GFLOP counted)")
    # The timers (two clock reads and a dict update per op, forward and backward) cost the
    # step time of their own, charged to every family but BLAS's few large calls: measured
    # as the timed step minus the same step untimed (alternating), and left out here.
    print(f"  the step untimed, alternating with the timed ones: {untimed * 1e3:.0f} ms (timed minus untimed "
          f"{(total - untimed) * 1e3:+.0f} ms: the timers' cost, plus the machine's noise); inside BLAS "
          f"{blas / untimed:.1%} of the untimed step")
    print(f"  the limit: 6·N·D = 6 × {n_params / 1e6:.2f}M parameters × {B * T} tokens = {flops_6nd / 1e9:.1f} GFLOP "
          f"at this machine's sgemm rate ({B * T}x{C}x{4 * C}, best of 20: {rate / 1e9:.1f} GFLOP per CPU s) = "
          f"{flops_6nd / rate * 1e3:.0f} ms/step, {B * T * rate / flops_6nd:,.0f} tokens/s; minidist's step is "
          f"{ours_cpu * rate / flops_6nd:.2f}x that (CPU time)")


# -- main -------------------------------------------------------------------------------------
def main(args):
    tune_malloc()  # a command owns its process: it may retune malloc; import minidist must not
    cfg = dict(n_layer=args.layers, n_embd=args.width, n_head=args.heads, block_size=args.seq, vocab_size=65)
    B, T = args.batch, args.seq
    timeout = os.environ.get("OPENBLAS_THREAD_TIMEOUT")
    print(f"GPT {args.layers}L/{args.width}w/{args.heads}h, seq {T}, batch {B}, {args.threads} thread(s)"
          + (f" (OPENBLAS_THREAD_TIMEOUT={timeout})" if timeout and args.threads > 1 else "")
          + f", {args.steps} steps × {args.repeats} side-by-side repetitions")
    import minidist
    minidist.set_num_threads(args.threads)     # BLAS and the ops' elementwise work, as torch.set_num_threads
    try:
        import torch
        torch.set_num_threads(args.threads)
    except ImportError:
        torch = None
        print("PyTorch not installed: no peer to compare with (pip install torch)")
    ours_step, dev = minidist_runner(cfg, B, T, accounting=True)
    bare_step, _ = minidist_runner(cfg, B, T, accounting=False)
    runners = {"minidist": ours_step, "off": bare_step}
    if torch is not None:
        runners["torch"] = torch_runner(cfg, B, T)
    if args.threads > 1:               # the same step with the ops' own threads off (BLAS still on n)
        runners["one-thread ops"] = one_thread_ops(minidist_runner(cfg, B, T, accounting=True)[0])
    rows, gains = [], []               # per run: (wall, cpu) ratio, accounting overhead (wall, cpu), our step
    for r in range(args.repeats):
        t = side_by_side(runners, args.steps)
        nan = (float("nan"),) * 2
        (ours, ours_c), (bare, bare_c), (theirs, theirs_c) = t["minidist"], t["off"], t.get("torch", nan)
        rows.append((theirs / ours, theirs_c / ours_c, ours / bare - 1, ours_c / bare_c - 1, ours, ours_c))
        print(f"  run {r + 1}: minidist {B * T / ours:6.0f} tokens/s, PyTorch {B * T / theirs:6.0f} tokens/s: "
              f"ratio {theirs / ours:.2f}x (CPU time {theirs_c / ours_c:.2f}x); accounting off "
              f"{B * T / bare:6.0f} tokens/s: accounting {ours / bare - 1:+.1%} (CPU time {ours_c / bare_c - 1:+.1%})")
        if "one-thread ops" in t:
            single = t["one-thread ops"][0]
            gains.append(single / ours - 1)
            print(f"         the ops' elementwise work on one thread: {B * T / single:6.0f} tokens/s "
                  f"(intra-op threads save {1 - ours / single:.1%} of the step)")
    top = sorted(dev.flops_by_op.items(), key=lambda kv: -kv[1])[:5]
    print("counted FLOPs by op (top 5, all steps): "
          + ", ".join(f"{k} {v / 1e9:.2f}G" for k, v in top))
    cols = list(zip(*rows))

    def stat(values, fmt):
        return f"median {fmt(np.median(values))}, spread {fmt(min(values))} to {fmt(max(values))}"
    times = lambda v: f"{v:.2f}x"          # noqa: E731
    percent = lambda v: f"{v:+.1%}"        # noqa: E731
    print(f"ratio minidist/PyTorch over {args.repeats} runs: wall {stat(cols[0], times)}; "
          f"CPU time {stat(cols[1], times)}")
    print(f"accounting overhead: wall {stat(cols[2], percent)}; CPU time {stat(cols[3], percent)}")
    if gains:
        print(f"intra-op threads (minidist.set_num_threads({args.threads})): the step is "
              f"{stat(gains, percent)} slower with the ops' elementwise work on one thread")
    ours_wall, ours_cpu = float(np.median(cols[4])), float(np.median(cols[5]))
    if not args.no_profile:
        print_profile(cfg, B, T, ours_wall, ours_cpu)


if __name__ == "__main__":
    sys.exit(main(ARGS))
