"""Chapter: context parallelism — ring attention and DeepSpeed-Ulysses (:mod:`minidist.parallel.context`).

Everything is measured on the tour's ranks:

1. the online-softmax merge, one key block at a time, ends on the softmax over all keys;
2. ring attention and Ulysses on 2 and 4 ranks equal one-rank attention (output and
   gradients), and every rank sends the bytes of :mod:`minidist.estimate.context`;
3. the zigzag order balances the causal ring: the same attention with contiguous chunks and
   with zigzag chunks, on the simulated timeline (figure 13_zigzag_timeline);
4. a sweep of the sequence length on one attention layer: bytes and simulated time per rank of
   ring and Ulysses — where each wins (figure 13_ring_vs_ulysses);
5. the activations each rank keeps, measured on the tiny GPT: 1/cp of one rank's (figure
   13_activation_memory);
6. training with the Trainer on all the ranks, ring and Ulysses, equals one rank.
"""
from __future__ import annotations

import copy

import numpy as np

from .. import distributed as dist
from .. import functional as F
from ..device import Device
from ..distributed.log import MessageLog
from ..estimate.context import attention_elements
from ..layers import Layers
from ..model import GPT, GPTConfig
from ..parallel.context import (ContextParallelLayers, block_attention, merge_blocks, positions, ring_attention,
                                ulysses_attention, work)
from ..plotting.context import plot_activation_memory, plot_ring_vs_ulysses, plot_zigzag_timeline
from ..tensor import Tensor
from .world import first_ranks, largest_power_of_two
from ..training.trainer import Trainer

TITLE = "Context parallelism: ring attention and Ulysses"

SEQS = (64, 128, 256, 512, 1024)        # the sweep's sequence lengths
B, NH, HS = 1, 8, 16                    # one attention layer of the sweep (h = 128)
# a small device on slow links (250 GFLOP/s, α 1 µs, 4 GB/s): the sweep's tiny layer is then
# communication-bound at short sequences and compute-bound at long ones, as a big model on a
# real cluster is at far longer ones
SLOW = {"preset": "laptop", "flops": 2.5e11, "alpha": 1e-6, "beta": 4e9, "name": "slow-link"}
LINK = "250 GFLOP/s, α 1 µs, β 4 GB/s"
BALANCE = 512                           # the sequence length of the timeline
MODEL = {"n_layer": 2, "n_embd": 16, "n_head": 4}
CONFIG = {"model": {**MODEL, "block_size": 16, "dropout": 0.1}, "data": {"dataset": "english", "seq_len": 16},
          "steps": 2, "eval_iters": 1, "train_micro_batch_size_per_gpu": 2, "dtype": "float64"}


def fresh(comm, spec=None):
    """A copy of ``comm`` with a new device (at t = 0) and an empty log: a clean measurement."""
    out = comm.dup()
    out.device, out.log = Device(spec or comm.device.spec, rank=comm.rank), MessageLog()
    return out


def online_softmax(n_blocks: int = 4, keys: int = 12, seed: int = 0) -> dict:
    """One query against ``keys`` keys arriving in ``n_blocks`` blocks: the running output and
    log-sum-exp after each merge, and the softmax over all keys at once."""
    rng = np.random.default_rng(seed)
    q, k, v = rng.normal(size=(1, 4)), rng.normal(size=(keys, 4)), rng.normal(size=(keys, 4))
    cuts = np.array_split(np.arange(keys), n_blocks)
    out, lse = block_attention(q, k[cuts[0]], v[cuts[0]])
    steps = [(1, float(lse[0]), float(out[0, 0]))]
    for i, idx in enumerate(cuts[1:], 2):
        out, lse = merge_blocks(out, lse, *block_attention(q, k[idx], v[idx]))
        steps.append((i, float(lse[0]), float(out[0, 0])))
    whole, whole_lse = block_attention(q, k, v)
    return {"steps": steps, "error": float(np.abs(out - whole).max()), "lse": float(whole_lse[0])}


def attention_pass(g, algorithm: str, arrays, layout: str | None = None, causal: bool = True) -> dict:
    """Forward and backward of one attention on ``g`` (this rank's positions of the whole
    ``arrays`` q, k, v, dO): output, gradients, bytes sent, simulated time, compute spans."""
    layout = layout or ("zigzag" if algorithm == "ring" else "contiguous")
    T = arrays[0].shape[2]
    pos = positions(g.rank, g.size, T, layout)
    q, k, v = (Tensor(np.ascontiguousarray(a[:, :, pos]), requires_grad=True) for a in arrays[:3])
    with g.device:
        if algorithm == "ring":
            y = ring_attention(q, k, v, g, causal, layout)
        else:
            y = ulysses_attention(q, k, v, g, causal)
        (y * Tensor(arrays[3][:, :, pos])).sum().backward()
        t = g.device.clock.sync()
    spans = [(e["ts"] * 1e-6, e["dur"] * 1e-6, e["name"].endswith("backward")) for e in g.device.trace.events
             if e["tid"] == "compute" and e["name"].startswith("ring_attention")]
    return {"pos": pos, "y": y.data, "grads": (q.grad, k.grad, v.grad), "bytes": g.log.bytes_sent(),
            "time": t, "spans": spans, "compute": g.device.flops / g.device.spec.flops}


def _arrays(T, nh=4, hs=4, seed=0, dtype=np.float64):
    rng = np.random.default_rng(seed)
    return [rng.normal(size=(B, nh, T, hs)).astype(dtype) for _ in range(4)]


def equality(comm) -> list:
    """Ring and Ulysses on groups of 2 and 4 ranks against one rank's attention (float64)."""
    arrays = _arrays(16)
    q, k, v = (Tensor(a, requires_grad=True) for a in arrays[:3])
    y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
    (y * Tensor(arrays[3])).sum().backward()
    want = (y.data, q.grad, k.grad, v.grad)
    rows = []
    for cp in (c for c in (2, 4) if comm.size % c == 0):
        for algorithm in ("ring", "ulysses"):
            r = attention_pass(fresh(comm).split(comm.rank // cp, comm.rank), algorithm, arrays)
            err = max(float(np.abs(got - w[:, :, r["pos"]]).max()) for got, w in zip((r["y"], *r["grads"]), want))
            e = attention_elements(algorithm, cp, B, 16, 16)
            rows.append({"cp": cp, "algorithm": algorithm, "error": err, "bytes": r["bytes"],
                         "formula": (e["forward"] + e["backward"]) * 8})
    return rows


def balance(comm) -> dict:
    """The causal ring over all the ranks with contiguous and with zigzag chunks: every
    rank's compute spans on the simulated timeline (fp32, the slow device)."""
    arrays = _arrays(BALANCE, NH, HS, dtype=np.float32)
    out = {}
    for layout in ("contiguous", "zigzag"):
        r = attention_pass(fresh(comm, SLOW), "ring", arrays, layout)
        out[layout] = {"spans": r["spans"], "time": r["time"], "work": work(comm.size, layout)[comm.rank].tolist()}
    return out


def sweep(comm) -> dict:
    """Ring and Ulysses over all the ranks on one attention layer, forward and backward, for
    every sequence length of SEQS: bytes and simulated time of this rank."""
    out = {a: {"seq": list(SEQS), "bytes": [], "formula": [], "time": [], "compute": []} for a in ("ring", "ulysses")}
    for T in SEQS:
        arrays = _arrays(T, NH, HS, seed=T, dtype=np.float32)
        for algorithm, row in out.items():
            r = attention_pass(fresh(comm, SLOW), algorithm, arrays)
            e = attention_elements(algorithm, comm.size, B, T, NH * HS)
            row["bytes"].append(r["bytes"])
            row["formula"].append((e["forward"] + e["backward"]) * 4)
            row["time"].append(r["time"])
            row["compute"].append(r["compute"])
    return out


def _activations(g, algorithm, T: int) -> int:
    """Activation bytes one rank keeps at the end of the tiny GPT's forward over T positions."""
    cfg = GPTConfig(block_size=T, vocab_size=13, **MODEL)
    layers = ContextParallelLayers(Layers(), g, algorithm) if algorithm else Layers()
    idx = np.random.default_rng(T).integers(0, 13, (2, T))
    with g.device:
        model = GPT(cfg, seed=0, layers=layers)
        loss = model(idx, idx)[1]
        held = g.device.memory.current["activations"]
        loss.backward()
    return held


def memory(comm) -> dict:
    """Activations per rank: against cp (T = 64) and against T (one rank, and all the ranks)."""
    by_cp = {a: {} for a in ("ring", "ulysses")}
    for cp in (c for c in (1, 2, 4) if comm.size % c == 0):
        for algorithm in by_cp:
            by_cp[algorithm][cp] = _activations(fresh(comm).split(comm.rank // cp, comm.rank), algorithm, 64)
    seqs = [16, 32, 64, 128]
    by_seq = {"one rank": [_activations(fresh(comm).split(comm.rank, 0), None, T) for T in seqs]}
    for algorithm in ("ring", "ulysses"):
        by_seq[f"{algorithm}, cp = {comm.size}"] = [_activations(fresh(comm), algorithm, T) for T in seqs]
    return {"by_cp": by_cp, "by_seq": {"seq": seqs, **by_seq}, "one_rank": by_seq["one rank"][seqs.index(64)]}


def training(comm) -> dict:
    """The Trainer with parallel.context.size = all the ranks, ring and Ulysses, against one
    rank on the same global batch: the largest relative difference of any weight."""
    out = {}
    one = Trainer(copy.deepcopy(CONFIG)) if comm.rank == 0 else None
    for step in range(CONFIG["steps"]):
        if one is not None:
            one.train_step(step)
    for algorithm in ("ring", "ulysses"):
        cfg = copy.deepcopy(CONFIG)
        cfg["parallel"] = {"context": {"size": comm.size, "algorithm": algorithm}}
        t = Trainer(cfg, fresh(comm))
        for step in range(cfg["steps"]):
            t.train_step(step)
        mine = t.model.state_dict()
        if one is not None:
            ref = one.model.state_dict()
            out[algorithm] = max(float(np.abs(mine[k] - ref[k]).max() / np.abs(ref[k]).max()) for k in ref)
    return out


def run(comm, out_dir) -> dict:
    # the cuts need a power of two of ranks (s = 512 and the sweep's lengths in 2·cp chunks): 2 of 3 ranks;
    # Ulysses gives each rank whole heads, so at most the training model's n_head ranks: 4 of 8
    comm = first_ranks(comm, min(largest_power_of_two(comm.size), MODEL["n_head"]), "context")
    if comm is None:
        return {}
    cp = comm.size
    eq, bal, sw, mem, tr = equality(comm), balance(comm), sweep(comm), memory(comm), training(comm)
    # why: rank 0 draws every rank's timeline
    timelines = dist.gather_object(comm, bal)
    if comm.rank != 0:
        return {}
    soft = online_softmax()
    print("online softmax, one query, 12 keys in 4 blocks: " + "; ".join(
        f"after block {i}: lse {lse:.4f}, out[0] {o:+.4f}" for i, lse, o in soft["steps"])
        + f"; softmax over all keys at once: lse {soft['lse']:.4f}, largest difference {soft['error']:.1e}")
    print(f"{'cp':>3} {'algorithm':>9} {'max |error| vs one rank':>24} {'bytes sent/rank':>16} {'formula':>8}")
    for r in eq:
        print(f"{r['cp']:>3} {r['algorithm']:>9} {r['error']:>24.1e} {r['bytes']:>16} {r['formula']:>8}")
    steps = {lay: max(t[lay]["time"] for t in timelines) for lay in ("contiguous", "zigzag")}
    print(f"causal ring on {cp} ranks, s = {BALANCE}: blocks of work per rank and step, contiguous "
          f"{[t['contiguous']['work'] for t in timelines]}, zigzag {[t['zigzag']['work'] for t in timelines]} "
          f"(a block: (s/2cp)² scores); forward + backward {steps['contiguous'] * 1e3:.3f} ms contiguous, "
          f"{steps['zigzag'] * 1e3:.3f} ms zigzag")
    print(f"one attention layer (b {B}, {NH} heads × {HS}, fp32), cp {cp}, device {LINK}: bytes sent per rank and "
          f"simulated time, forward + backward (of which computing)")
    print(f"{'s':>6} {'ring B':>9} {'Ulysses B':>10} {'ring ms':>16} {'Ulysses ms':>16}  faster")
    for i, T in enumerate(SEQS):
        r, u = sw["ring"], sw["ulysses"]
        cell = lambda x, i=i: f"{x['time'][i] * 1e3:.3f} ({x['compute'][i] * 1e3:.3f})"      # noqa: E731
        print(f"{T:>6} {r['bytes'][i]:>9} {u['bytes'][i]:>10} {cell(r):>16} {cell(u):>16}  "
              f"{'ring' if r['time'][i] < u['time'][i] else 'Ulysses'}")
    exact = all(sw[a]["bytes"] == sw[a]["formula"] for a in sw)
    print(f"every sweep point's bytes equal the formula: {exact}")
    one = mem["one_rank"]
    print("activations per rank at s = 64 (tiny GPT, one rank " + f"{one} B): " + "; ".join(
        f"{a} " + ", ".join(f"cp {c}: {b} B" for c, b in v.items()) for a, v in mem["by_cp"].items()))
    print(f"training {CONFIG['steps']} steps on {cp} ranks (float64, dropout 0.1) against one rank: largest relative "
          f"weight difference " + ", ".join(f"{a} {d:.1e}" for a, d in tr.items()))
    paths = [
        plot_zigzag_timeline(timelines, out_dir / "13_zigzag_timeline.png",
                             f"Causal ring attention on {cp} ranks (s = {BALANCE}, {LINK}): contiguous chunks against zigzag"),
        plot_ring_vs_ulysses(sw, out_dir / "13_ring_vs_ulysses.png",
                             f"One attention layer on {cp} ranks ({NH} heads × {HS}, fp32; {LINK})"),
        plot_activation_memory(mem, out_dir / "13_activation_memory.png", one),
    ]
    print("figures: " + ", ".join(p.name for p in paths))
    return {"softmax": soft, "equality": eq, "balance": timelines, "sweep": sw, "memory": mem, "training": tr,
            "figures": [str(p) for p in paths]}
