"""Chapter: activation checkpointing, offload and communication overlap.

Everything shown is measured on simulated devices, on the tour's ranks:

1. **The activation staircase.** One forward and backward of a 4-layer GPT (bf16, dropout
   0.1) with ``granularity`` none, selective and full, on one rank, under TP 2 and under
   TP 2 + SP (ranks 0 and 1): each block's forward adds one stair of activation bytes, and
   each stair equals Korthikanti et al. 2022's bytes per layer (Table 2 and §5, written out
   in :mod:`minidist.estimate.activations`) plus the engine's named extras: LayerNorm keeps
   its normalised input in fp32, 4 bytes an element where the paper counts 2 (+4sbh), and
   1/σ per token (+8sb), both split by t under SP. Megatron's ``recompute_method`` and
   ``num_layers`` decide which blocks keep only their input; DeepSpeed's ``cpu_checkpointing``
   moves those inputs to the host pool and ``partition_activations`` keeps 1/t of each
   (figure 07_activation_staircase).
2. **What recomputation costs.** FLOPs and simulated time of the same forward and backward:
   ``full`` adds exactly one forward of the blocks (their matmuls go from 6·N·D to 8·N·D),
   ``selective`` only the attention core's; the recomputed ops (``recompute <op>``) and
   cpu_checkpointing's ``d2h``/``h2d`` copies on the timeline (07_recompute_timeline).
3. **Overlap.** DDP's gradient all-reduce fires only in the last micro-batch (``no_sync()``
   before it) and, with ``overlap_comm``, under that micro-batch's backward; ZeRO-3's
   prefetch gathers the next block while this one computes; Megatron's ``tp_comm_overlap``
   runs backward's TP collectives under the dX and dW matmuls. Each with the step time
   saved, and the losses and weights bit-identical (07_overlap_timelines).
"""
from __future__ import annotations

import contextlib
from pathlib import Path

import numpy as np

from ..autocast import autocast
from ..defaults import DDP, ZERO3
from ..device import Device
from ..estimate.activations import activation_memory, checkpointed_layers, layer_activation_bytes
from ..estimate.flops import training_flops
from ..model import GPT, GPTConfig, Recompute
from ..parallel.grid import ProcessGrid
from ..parallel.tensor import CheckpointPartition, TensorParallelLayers
from ..plotting.checkpointing import plot_overlap_timelines, plot_recompute_timeline, plot_staircase
from ..training.trainer import Trainer

TITLE = "Activation checkpointing, offload and overlap"

# a toy chip on which a matmul and a message take comparable time (tests/test_tp_overlap.py's),
# with a host link slow enough that cpu_checkpointing's copies show on the timeline
DEVICE = {"name": "toy (10 GFLOP/s, α 1 µs, 1 GB/s links, 0.1 GB/s host link)", "flops": 1e10, "alpha": 1e-6,
          "beta": 1e9, "host_bandwidth": 1e8}
S, B, H, A, L, V = 16, 2, 32, 4, 4, 11       # sequence, micro-batch, hidden, heads, layers, vocabulary
GRANULARITIES = ("none", "selective", "full")
LAYOUTS = {"one rank": (1, False), "TP 2": (2, False), "TP 2 + SP": (2, True)}    # label: (t, sp)
POLICIES = [("uniform", 1), ("uniform", 2), ("uniform", 4), ("block", 1), ("block", 3)]   # full: method, num_layers
US = 1e6                                      # seconds -> µs

# the overlap runs: tests/test_tp_overlap.py's model; DDP accumulates 4 micro-batches
OVERLAP_MODEL = {"n_layer": 2, "n_embd": 64, "n_head": 4, "block_size": 16, "dropout": 0.1}
MICRO_BATCHES = 4
DDP_BUCKET = 20_000                           # elements: several buckets, each launched once its gradients are done


# -- 1 and 2: the staircase and what it costs ---------------------------------------------------
def korthikanti(granularity: str, t: int = 1, sp: bool = False) -> tuple[float, str]:
    """Korthikanti et al. 2022 per layer (16-bit activations, 1-byte masks): (bytes, closed form)."""
    sbh, attn, core = S * B * H, 5 * A * S / H, granularity == "none"
    if granularity == "full":
        return 2 * sbh / (t if sp else 1), "2sbh/t" if sp else "2sbh"
    if sp:
        return sbh / t * (34 + attn * core), "sbh/t·(34 + 5as/h)" if core else "34sbh/t"
    if t > 1:
        return sbh * (10 + 24 / t + attn / t * core), "sbh(10 + 24/t + 5as/(ht))" if core else "sbh(10 + 24/t)"
    return sbh * (34 + attn * core), "sbh(34 + 5as/h)" if core else "34sbh"


def engine_extras(granularity: str, t: int = 1, sp: bool = False) -> dict:
    """What the engine keeps per layer that the paper does not count, split by t under SP:
    LayerNorm computes in fp32, so its two normalised inputs take 4 bytes an element, not 2
    (+4sbh), and it keeps 1/σ per token in fp32 (+8sb). A recomputed layer keeps neither."""
    rep, whole = (t if sp else 1), granularity != "full"
    return {"+4sbh": whole * 4 * S * B * H // rep, "+8sb": whole * 8 * S * B // rep}


def staircase(tp_comm, granularity: str, sp: bool = False, method: str = "uniform", num_layers: int = 1,
              cpu: bool = False, partition: bool = False, by_block: bool = True) -> dict:
    """One forward and backward (bf16, dropout 0.1) on a fresh device. ``by_block``: run the
    blocks one at a time and read each stair off (activation bytes on the device and the host
    after each block's forward); else all at once (a ``uniform`` unit spans several blocks).
    ``tp_comm``: the tensor-parallel ranks (None: one rank)."""
    dev = Device(DEVICE, rank=tp_comm.rank if tp_comm is not None else 0)
    if tp_comm is not None:
        tp_comm.device = dev                          # this measurement's memory and clock start at 0
    ids = np.random.default_rng(0).integers(0, V, (B, S))
    with dev:
        tp = ProcessGrid(tp_comm, tp=tp_comm.size).tp if tp_comm is not None else None
        layers = TensorParallelLayers(tp, sequence_parallel=sp) if tp is not None else None
        cfg = GPTConfig(block_size=S, vocab_size=V, n_layer=L, n_head=A, n_embd=H, dropout=0.1)
        model = GPT(cfg, seed=1, layers=layers).set_recompute(Recompute(
            granularity, method, num_layers, cpu, CheckpointPartition(tp) if partition else None))
        model.set_dropout_key(0, 0)
        held = lambda: (dev.memory.current["activations"], dev.host.current["activations"])   # noqa: E731
        with autocast("bf16"), model.layers.sequence(S):
            x = model.embed(ids)
            levels, ends, f0 = [held()], [], dev.flops
            for unit in ([[i] for i in model.layer_ids] if by_block else [model.layer_ids]):
                x = model.blocks(x, layer_ids=unit)
                levels.append(held())
                ends.append(dev.clock.now("compute") * US)
            blocks_forward = dev.flops - f0
            _, loss = model.head(x, np.zeros((B, S), dtype=int))
        forward_end = dev.clock.now("compute")
        loss.backward()
        dev.clock.sync()
    times, per = dev.memory.curves()
    host_times, host = dev.host.curves()
    return {"stairs": [int(b[0] - a[0]) for a, b in zip(levels, levels[1:])], "base": levels[0][0], "block_ends": ends,
            "host_stairs": [int(b[1] - a[1]) for a, b in zip(levels, levels[1:])],
            "times": times * US, "activations": per["activations"], "host_times": host_times * US,
            "host": host["activations"], "forward_end": forward_end * US, "step_us": dev.clock.time * US,
            "flops": dev.flops, "matmul_flops": dev.matmul_flops,
            "recompute_flops": sum(v for k, v in dev.flops_by_op.items() if k.startswith("recompute ")),
            "recompute_matmul_flops": sum(dev.flops_by_op.get(f"recompute {op}", 0)
                                          for op in ("linear", "attention", "matmul")),
            "blocks_forward_flops": blocks_forward, "events": dev.trace.events}


def layer_rows(runs: dict) -> list:
    """Per layout and granularity: every stair measured beside Korthikanti, the extras, the estimator."""
    rows = []
    for (label, g), r in runs.items():
        t, sp = LAYOUTS[label]
        paper, form = korthikanti(g, t, sp)
        extras = engine_extras(g, t, sp)
        rows.append({"layout": label, "granularity": g, "t": t, "sp": sp, "stairs": r["stairs"],
                     "korthikanti": paper, "closed_form": form, "extras": extras,
                     "formula": paper + sum(extras.values()),
                     "estimator": layer_activation_bytes(S, B, H, A, t, sp, g),
                     "estimator_blocks": activation_memory(S, B, H, A, L, t, sp, g)["total"]})
    return rows


def policy_rows(comm_runs: dict) -> list:
    """Megatron's method and num_layers on one rank: the blocks' bytes beside the estimator's."""
    rows = []
    for (method, k), r in comm_runs.items():
        kept, whole = checkpointed_layers(L, "full", method, k)
        est = activation_memory(S, B, H, A, L, checkpointing="full", method=method, num_layers=k)["total"]
        extras = whole * sum(engine_extras("none").values())
        rows.append({"method": method, "num_layers": k, "checkpoints": kept, "whole_layers": whole,
                     "measured": r["stairs"][0], "estimator": est, "extras": extras})
    return rows


def cost_rows(runs: dict) -> dict:
    """One rank: FLOPs, recomputed FLOPs and simulated time of forward + backward per granularity."""
    none = runs["none"]
    D, N = B * S, 12 * H * H * L                      # tokens; the blocks' matmul weights
    out = {}
    for g, r in runs.items():
        gran = "full" if g.startswith("full") else g
        est = training_flops(1.0, D, L, H, S, gran, recomputed_fraction=1.0, block_params=N)
        out[g] = {"flops": r["flops"], "matmul_flops": r["matmul_flops"], "recompute_flops": r["recompute_flops"],
                  "recompute_matmul_flops": r["recompute_matmul_flops"], "estimate_recompute": est["recompute_flops"],
                  "step_us": r["step_us"], "extra_flops": r["flops"] - none["flops"],
                  "extra_us": r["step_us"] - none["step_us"]}
    out["blocks_forward_flops"] = none["blocks_forward_flops"]
    out["blocks_matmul_per_pass"] = 2 * N * D         # 2·N·D: one forward of the blocks' weights
    return out


# -- 3: overlap ---------------------------------------------------------------------------------
def overlap_config(**extra) -> dict:
    cfg = {"model": dict(OVERLAP_MODEL), "data": {"dataset": "english", "seq_len": 16}, "steps": 1, "eval_iters": 1,
           "train_micro_batch_size_per_gpu": 4, "gradient_accumulation_steps": 1, "device": DEVICE}
    cfg.update(extra)
    return cfg


def _fresh(comm):
    """A private communicator with a fresh device: the run's memory and clock start at 0."""
    comm = comm.dup()
    comm.device = Device(DEVICE, rank=comm.rank)
    return comm


def _weights(trainer) -> dict:
    return {k: v.copy() for k, v in trainer.model.state_dict().items()}


def _lanes(events) -> list:
    """The trace events a timeline draws: compute and top-level collectives (no single sends)."""
    return [e for e in events if e.get("ph") == "X" and e["tid"] in ("compute", "comm")
            and not e["name"].startswith(("send", "recv"))]


def ddp_no_sync(comm, overlap: bool) -> dict:
    """DDP over every rank, MICRO_BATCHES micro-batches by hand: ``no_sync()`` around every
    backward but the last, as torch's DDP names it. Bytes sent and compute span per micro-batch."""
    comm = _fresh(comm)
    t = Trainer(overlap_config(gradient_accumulation_steps=MICRO_BATCHES, zero_optimization={
        "stage": 0, "overlap_comm": overlap, "reduce_bucket_size": DDP_BUCKET}), comm)
    s, k, dev = t.strategy, MICRO_BATCHES, t.device
    sent, spans, losses, start = [], [], [], comm.log.mark()
    with dev:
        for micro in range(k):
            mark, t0 = comm.log.mark(), dev.clock.now("compute")
            x, y = t.batch(0, micro)
            t.model.set_dropout_key(0, micro, row_offset=t.dp_rank * t.micro_batch)
            loss = t.compute_loss(x, y, 0, micro)
            # why: the first k−1 backwards only accumulate; the last one reduces the sum once
            with s.no_sync() if micro < k - 1 else contextlib.nullcontext():
                (loss * np.asarray(1.0 / k, dtype=loss.data.dtype)).backward()
                s.after_backward()
            losses.append(float(loss.data))
            spans.append((t0 * US, dev.clock.now("compute") * US))
            sent.append(comm.log.since(mark).bytes_sent())
        s.step()
        dev.clock.sync()
    reduces = [(c.t_start * US, c.t_end * US) for c in comm.log.since(start).collectives if c.op == "all_reduce"]
    return {"sent": sent, "spans": spans, "step_us": dev.clock.time * US, "losses": losses, "weights": _weights(t),
            "expected_bytes": s.expected_bytes_sent(), "all_reduces": reduces, "events": _lanes(dev.trace.events)}


def trained(comm, **extra) -> dict:
    """One step of ``overlap_config(**extra)`` on ``comm`` with a fresh device."""
    t = Trainer(overlap_config(**extra), comm)
    t.train_step(0)
    tp_group = tuple(t.grid.tp.group) if t.cfg["parallel"]["tensor"] > 1 else None
    tp_comm = sum(c.t_end - c.t_start for c in t.step_log.collectives if tp_group and tuple(c.group) == tp_group)
    return {"step_us": t.history[0]["sim_time"] * US, "loss": t.history[0]["loss"], "weights": _weights(t),
            "bytes_sent": t.history[0]["bytes_sent"], "tp_comm_us": tp_comm * US, "events": _lanes(t.device.trace.events)}


def same(a: dict, b: dict) -> bool:
    """Bit-identical losses and weights."""
    la, lb = a.get("losses", [a.get("loss")]), b.get("losses", [b.get("loss")])
    return la == lb and all(np.array_equal(a["weights"][k], b["weights"][k]) for k in b["weights"])


def pair_off(a: dict, b: dict) -> dict:
    """An off/on pair: times, saved, identical numbers; the runs themselves kept for the figure."""
    return {"off_us": a["step_us"], "on_us": b["step_us"], "saved_us": a["step_us"] - b["step_us"],
            "identical": same(a, b), "off": a, "on": b}


def summary(pair: dict) -> dict:
    """What the chapter reports of a pair: the numbers, without the timelines and weights."""
    on = {k: v for k, v in pair["on"].items() if k in ("sent", "expected_bytes", "spans", "all_reduces")}
    return {**{k: v for k, v in pair.items() if k not in ("off", "on")}, **on,
            "tp_comm_us": pair["off"].get("tp_comm_us", 0.0)}


def overlap_runs(comm, pair) -> dict:
    """Every overlap measurement; ``pair``: ranks 0 and 1 (None on the others)."""
    out = {DDP: pair_off(ddp_no_sync(comm, False), ddp_no_sync(comm, True))}
    z3 = {"stage": 3, "overlap_comm": True}
    out[ZERO3] = pair_off(trained(_fresh(comm), zero_optimization={**z3, "stage3_prefetch_bucket_size": 0}),
                            trained(_fresh(comm), zero_optimization=z3))          # DeepSpeed's default budget
    for label, sp in (("tp", False), ("tp+sp", True)):
        runs = []
        for on in (False, True):
            if pair is not None:
                pair.device = Device(DEVICE, rank=pair.rank)
                runs.append(trained(pair, parallel={"tensor": 2, "sequence_parallel": sp, "tp_comm_overlap": on}))
        out[label] = pair_off(*runs) if runs else None
    return out


# -- the chapter ----------------------------------------------------------------------------------
def run(comm, out_dir) -> dict:
    out_dir = Path(out_dir)
    if comm.size < 2:
        if comm.rank == 0:
            print("this chapter needs at least 2 ranks; run the tour with --world-size 4")
        return {}
    # why: TP 2 runs on ranks 0 and 1 only; the others skip (in-process ranks share one CPU)
    pair = comm.split(0 if comm.rank < 2 else None)
    runs, policies, costs = {}, {}, {}
    for label, (t, sp) in LAYOUTS.items():
        for g in GRANULARITIES:
            if t == 1 and comm.rank == 0:
                runs[label, g] = staircase(None, g)
            elif t > 1 and pair is not None:
                runs[label, g] = staircase(pair, g, sp)
    extra = {}
    if pair is not None:                               # DeepSpeed's partition_activations under TP 2
        extra["TP 2, full + partition_activations"] = staircase(pair, "full", partition=True)
    if comm.rank == 0:
        extra["one rank, full + cpu_checkpointing"] = staircase(None, "full", cpu=True)
        policies = {p: staircase(None, "full", method=p[0], num_layers=p[1], by_block=False) for p in POLICIES}
        costs = cost_rows({g: runs["one rank", g] for g in GRANULARITIES}
                          | {"full + cpu_checkpointing": extra["one rank, full + cpu_checkpointing"]})
    overlap = overlap_runs(comm, pair)
    if comm.rank != 0:
        return {}
    out_dir.mkdir(parents=True, exist_ok=True)
    result = {"layers": layer_rows(runs), "policies": policy_rows(policies), "costs": costs,
              "offload": {k: {"stairs": r["stairs"], "host_stairs": r["host_stairs"], "step_us": r["step_us"]}
                          for k, r in extra.items()},
              "overlap": {k: summary(v) for k, v in overlap.items()}}
    report(result)
    files = [plot_staircase(runs, result["layers"], out_dir / "07_activation_staircase.png"),
             plot_recompute_timeline({"none": runs["one rank", "none"], "full": runs["one rank", "full"],
                                      "full + cpu_checkpointing": extra["one rank, full + cpu_checkpointing"]},
                                     out_dir / "07_recompute_timeline.png"),
             plot_overlap_timelines(overlap, MICRO_BATCHES, out_dir / "07_overlap_timelines.png",
                                    world_size=comm.size)]
    print("figures: " + ", ".join(Path(f).name for f in files))
    result["files"] = [str(f) for f in files]
    return result


def report(r: dict) -> None:
    """Rank 0's tables."""
    print(f"tiny GPT: {L} layers, s = {S}, b = {B}, h = {H}, a = {A}; bf16, dropout 0.1 (1-byte masks); one forward "
          f"and backward on a {DEVICE['name']} chip")
    print("\nactivation bytes each block's forward adds (a stair of the staircase; every block the same) beside "
          "Korthikanti et al. 2022\nand the engine's extras (LayerNorm's fp32 inputs +4sbh and 1/σ per token +8sb, "
          "÷t under SP):")
    print(f"{'layout':<10} {'granularity':<10} {'measured':>9} {'Korthikanti':>12} {'closed form':<26} {'+4sbh':>6} "
          f"{'+8sb':>5} {'= formula':>9} {'estimator':>9}")
    for row in r["layers"]:
        e = row["extras"]
        print(f"{row['layout']:<10} {row['granularity']:<10} {row['stairs'][0]:>9} {row['korthikanti']:>12.0f} "
              f"{row['closed_form']:<26} {e['+4sbh']:>6} {e['+8sb']:>5} {row['formula']:>9.0f} {row['estimator']:>9.0f}")
    for label, o in r["offload"].items():
        print(f"{label}: per layer {o['stairs'][0]} B on the device, {o['host_stairs'][0]} B in the host pool")
    print("\nMegatron's recompute_method / recompute_num_layers (full, one rank): the blocks' bytes at the end of forward")
    print(f"{'method':<8} {'k':>2} {'checkpoints':>11} {'whole layers':>12} {'measured':>9} {'estimator':>9} "
          f"{'+ extras':>8}")
    for p in r["policies"]:
        print(f"{p['method']:<8} {p['num_layers']:>2} {p['checkpoints']:>11} {p['whole_layers']:>12} "
              f"{p['measured']:>9} {p['estimator']:>9.0f} {p['extras']:>8}")
    c = r["costs"]
    print(f"\nwhat recomputation costs, one rank, forward + backward of one micro-batch (one forward of the blocks: "
          f"{c['blocks_forward_flops']:,} FLOPs; their matmuls 2·N·D = {c['blocks_matmul_per_pass']:,})")
    print(f"{'granularity':<26} {'FLOPs':>11} {'+ vs none':>10} {'recomputed':>11} {'matmul part':>11} "
          f"{'estimator':>10} {'time µs':>8} {'+ µs':>7}")
    for g in (*GRANULARITIES, "full + cpu_checkpointing"):
        x = c[g]
        print(f"{g:<26} {x['flops']:>11,} {x['extra_flops']:>10,} {x['recompute_flops']:>11,} "
              f"{x['recompute_matmul_flops']:>11,} {x['estimate_recompute']:>10,.0f} {x['step_us']:>8.1f} "
              f"{x['extra_us']:>7.1f}")
    o = r["overlap"]
    print(f"\noverlap: the same step with it off and on, rank 0 (losses and weights bit-identical: "
          f"{all(v['identical'] for v in o.values() if v)})")
    print(f"{'mechanism':<34} {'off µs':>8} {'on µs':>8} {'saved µs':>9}")
    names = {DDP: f"DDP overlap_comm, {MICRO_BATCHES} micro-batches", ZERO3: "ZeRO-3 prefetch",
             "tp": "TP 2 tp_comm_overlap", "tp+sp": "TP 2 + SP tp_comm_overlap"}
    for k, name in names.items():
        x = o[k]
        print(f"{name:<34} {x['off_us']:>8.1f} {x['on_us']:>8.1f} {x['saved_us']:>9.1f}"
              + (f"   (of {x['tp_comm_us']:.1f} µs of TP collectives)" if k.startswith("tp") else ""))
    d = o[DDP]
    print(f"DDP bytes sent per micro-batch: {d['sent']} (no_sync() before the last; the step's one reduction: "
          f"{d['expected_bytes']:,} expected)")
