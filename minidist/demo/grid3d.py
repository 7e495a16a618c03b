"""Chapter: 3D parallelism (DP × TP × PP, Narayanan et al. 2021's PTD-P).

The tour's world (4 ranks) can hold the same tiny GPT in six ways: DP 4 × TP 1 × PP 1,
DP 2 × TP 2, DP 2 × PP 2, TP 2 × PP 2, TP 4 and PP 4. Each layout trains two steps of the same
global batch (4 sequences per micro-step, 4 micro-steps; ZeRO-1 over dp where dp > 1,
sequence parallelism where tp > 1, 1F1B where pp > 1) on a fresh simulated device per rank,
and the chapter prints, per rank and beside :func:`minidist.estimate.grid3d.estimate_for_config`:

* the model-state bytes at the optimizer step (measured = estimate, to the byte);
* the bytes sent in a step (the message log; measured = estimate, to the byte);
* the device's peak and the activations' peak, which the estimate does not itemise here;
* the simulated time of the first step (every rank's clock starts at 0), beside the
  compute-only time of a perfect split (:func:`minidist.estimate.training_flops` over
  4 × the device's FLOP/s) and, where pp > 1, the bubble measured on the executed timeline
  beside :func:`minidist.estimate.pipeline_bubble`'s (p−1)/(m+p−1);
* the largest relative difference of the full parameters after both steps from one rank
  trained on the same global batch (float64, so it is rounding: ~1e-13).

Figures: ``10_grid_map.png`` — 8 ranks as DP 2 × TP 2 × PP 2, which rank holds which stage
and shard, and the three groups of one rank; ``10_layouts.png`` — the six layouts' memory,
bytes and step time per rank.

On another world the chapter runs the layouts whose dp splits the global batch's 4 sequences
(:func:`batch_layouts`; 8 ranks: not DP 8, said so), on the first ranks that hold one
(:func:`ranks_used`; 3 ranks: DP 3 does not split 4 sequences, so the first 2).

Why the bubble measured is a little above the theory: the formula assumes equal stages, but
the last stage also runs the LM head and the loss (the chapter prints each stage's busy
time), and the other stages wait for it.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .. import distributed as dist
from ..defaults import ONE_F_ONE_B
from ..device import Device
from ..estimate import training_flops
from ..estimate.grid3d import estimate_for_config
from ..parallel.grid import GridShape
from ..parallel.pipeline.engine import bubble_from_ranks
from ..plotting.grid import plot_grid_map, plot_layouts, rank_map
from ..training.trainer import Trainer
from .world import first_ranks

TITLE = "3D parallelism (DP × TP × PP)"

# a slow toy chip whose links cost about as much as its compute: 5 GFLOP/s, α = 5 µs, 10 GB/s
DEVICE = {"name": "toy (5 GFLOP/s, α 5 µs, 10 GB/s)", "flops": 5e9, "alpha": 5e-6, "beta": 1e10}
MODEL = {"n_layer": 4, "n_embd": 32, "n_head": 4, "block_size": 16}
SEQ = 16
GLOBAL_MICRO = 4         # sequences per micro-step of the global batch: 4/dp per data-parallel rank
MICRO_STEPS = 4          # gradient_accumulation_steps: the pipeline's micro-batches m
STEPS = 2
SCHEDULE = ONE_F_ONE_B
MAP = GridShape(8, tp=2, pp=2)       # the rank map figure's grid: DP 2 × TP 2 × PP 2
MAP_RANK = 3                         # whose groups the map outlines
STATES = ("parameters", "gradients", "optimizer_states")
MS_PER_S = 1e3


def layouts(world: int, n_head: int = MODEL["n_head"], n_layer: int = MODEL["n_layer"]) -> list:
    """Every (dp, tp, pp) with dp·tp·pp = world that the model allows (tp | heads, pp | layers):
    data parallel first, then the model-parallel splits, smallest first."""
    out = [(world // (t * p), t, p) for t in range(1, world + 1) for p in range(1, world + 1)
           if world % (t * p) == 0 and n_head % t == 0 and n_layer % p == 0 and SEQ % t == 0]
    return sorted(out, key=lambda x: (-x[0], max(x[1], x[2]), -x[1]))


def batch_layouts(world: int) -> list:
    """The layouts of ``world`` ranks that split the global batch evenly: dp divides
    ``GLOBAL_MICRO`` sequences per micro-step (DP 8 would leave half its ranks without one)."""
    return [lay for lay in layouts(world) if GLOBAL_MICRO % lay[0] == 0]


def ranks_used(world: int) -> int:
    """How many of the tour's ranks the chapter runs on: the most, up to ``world``, that hold a
    layout of :func:`batch_layouts` (3 ranks: DP 3 does not split 4 sequences, and 3 is neither
    a divisor of the heads nor of the layers, so the first 2 ranks); 0 below 2 ranks."""
    return max((n for n in range(2, world + 1) if batch_layouts(n)), default=0)


def label(dp: int, tp: int, pp: int) -> str:
    return f"{dp}×{tp}×{pp}"


def config(dp: int = 1, tp: int = 1, pp: int = 1) -> dict:
    """The chapter's run on a dp × tp × pp layout; dp = 1, tp = 1, pp = 1 is the one-rank reference
    with the same global batch."""
    return {"model": dict(MODEL), "data": {"dataset": "english", "seq_len": SEQ}, "dtype": "float64",
            "steps": STEPS, "eval_iters": 1, "train_micro_batch_size_per_gpu": GLOBAL_MICRO // dp,
            "gradient_accumulation_steps": MICRO_STEPS, "optimizer": {"type": "Adam", "params": {"lr": 1e-2}},
            "device": DEVICE, "zero_optimization": {"stage": 1 if dp > 1 else 0},
            "parallel": {"tensor": tp, "pipeline": pp, "schedule": SCHEDULE, "sequence_parallel": tp > 1}}


def measure(comm, dp: int, tp: int, pp: int):
    """Train ``STEPS`` steps of one layout on a fresh device per rank (a collective). On rank 0:
    every rank's measurements, the estimate and the full parameters; None elsewhere."""
    # why: a private communicator with a fresh device, so this layout's memory and clock start
    # at zero (its bytes are each step's messages, read from the log since the step began)
    comm = comm.dup()
    comm.device = Device(DEVICE, rank=comm.rank)
    trainer = Trainer(config(dp, tp, pp), comm)
    trainer.train_step(0)
    # the first step's executed timeline: every clock started it at 0 (a later step starts
    # wherever each rank's previous one ended, and the bubble would count that too)
    pipe = trainer.pipeline.measured() if trainer.pipeline is not None else None
    for step in range(1, STEPS):
        trainer.train_step(step)
    full = trainer.full_parameters()        # a collective: the tp shards and pipeline stages joined
    memory = trainer.device.memory
    row = {"coords": trainer.grid.coords, "model_states": {c: trainer.strategy.model_states[c] for c in STATES},
           "peak": memory.peak, "activations": int(memory.curves()[1]["activations"].max()),
           "bytes_sent": [h["bytes_sent"] for h in trainer.history],
           "step_s": trainer.history[0]["sim_time"],
           "pipeline": None if pipe is None else {k: pipe[k] for k in ("t_begin", "t_end", "busy")}}
    # why: rank 0 prints and plots; each rank measured only its own memory and messages
    rows = dist.gather_object(comm, row, root=0)
    if comm.rank != 0:
        return None
    return {"ranks": rows, "estimate": estimate_for_config(trainer.cfg, comm.size, trainer.model_config.vocab_size),
            "full": full}


def reference() -> dict:
    """One rank on the same global batch: its parameters after every step and its step time."""
    trainer = Trainer(config(), None)
    for step in range(STEPS):
        trainer.train_step(step)
    return {"params": trainer.full_parameters(), "step_s": trainer.history[0]["sim_time"],
            "n_params": trainer.n_params}


def max_rel_diff(got: dict, want: dict) -> float:
    """max over parameters of max |got − want| / max |want|."""
    return max(float(np.max(np.abs(got[k] - want[k])) / np.max(np.abs(want[k]))) for k in want)


def summarise(dp: int, tp: int, pp: int, res: dict, ref: dict) -> dict:
    """A layout's table: per rank measured beside the estimate of its pipeline rank."""
    est = res["estimate"]
    ranks = []
    for world_rank, r in enumerate(res["ranks"]):
        e = est["ranks"][r["coords"]["pp"]]
        ranks.append({"rank": world_rank, "coords": r["coords"],
                      "model_states": r["model_states"], "model_states_total": sum(r["model_states"].values()),
                      "model_states_estimate": e["model_states"]["total"],
                      "peak": r["peak"], "activations": r["activations"],
                      "bytes_sent": r["bytes_sent"][-1], "bytes_sent_steps": r["bytes_sent"],
                      "bytes_sent_estimate": e["bytes_sent"]["total"], "step_ms": r["step_s"] * MS_PER_S})
    row = {"layout": (dp, tp, pp), "label": label(dp, tp, pp), "ranks": ranks,
           "step_ms": max(r["step_ms"] for r in ranks), "max_rel_diff": max_rel_diff(res["full"], ref["params"]),
           "bubble_measured": None, "bubble_theory": None, "stage_busy_ms": None}
    if pp > 1:
        # one pipeline: the pp ranks of replica 0 and tp rank 0 (their tp partners keep the same clock)
        shape = GridShape(len(ranks), tp=tp, pp=pp)
        one = [res["ranks"][shape.rank_of(pp=p)]["pipeline"] for p in range(pp)]
        row["bubble_measured"] = bubble_from_ranks(one)
        row["bubble_theory"] = est["pipeline"]["bubble_fraction"]
        row["stage_busy_ms"] = [r["busy"] * MS_PER_S for r in one]     # F and B time of each stage
    return row


def print_layout(row: dict) -> None:
    dp, tp, pp = row["layout"]
    how = ", ".join(["ZeRO-1 over dp" if dp > 1 else "no data parallelism"]
                    + (["sequence parallel"] if tp > 1 else []) + ([f"{SCHEDULE}, m = {MICRO_STEPS}"] if pp > 1 else []))
    bubble = (f"; bubble {row['bubble_measured']:.1%} measured, {row['bubble_theory']:.1%} theory (p−1)/(m+p−1); "
              f"busy ms per stage " + " ".join(f"{b:.2f}" for b in row["stage_busy_ms"]) if pp > 1 else "")
    print(f"\nDP {dp} × TP {tp} × PP {pp} ({how}): step {row['step_ms']:.2f} ms{bubble}; "
          f"max relative |Δw| from one rank after {STEPS} steps {row['max_rel_diff']:.1e}")
    print(f"  {'rank':>4} {'dp pp tp':>8} {'model states B':>15} {'estimate B':>11} {'activations B':>14} "
          f"{'peak B':>9} {'sent/step B':>12} {'estimate B':>11} {'step ms':>8}")
    for r in row["ranks"]:
        c = r["coords"]
        print(f"  {r['rank']:>4} {c['dp']:>2} {c['pp']:>2} {c['tp']:>2} {r['model_states_total']:>15} "
              f"{r['model_states_estimate']:>11} {r['activations']:>14} {r['peak']:>9} {r['bytes_sent']:>12} "
              f"{r['bytes_sent_estimate']:>11} {r['step_ms']:>8.2f}")


def print_summary(rows: list, ref: dict, compute_only_ms: float) -> None:
    print(f"\nall layouts, the most any rank holds or sends (bytes); step = slowest rank; one rank: "
          f"{ref['step_s'] * MS_PER_S:.2f} ms, compute only on {len(rows[0]['ranks'])} ranks: {compute_only_ms:.2f} ms")
    print(f"{'DP×TP×PP':<9} {'model states':>12} {'estimate':>9} {'peak':>9} {'sent/step':>10} {'estimate':>9} "
          f"{'step ms':>8} {'speed-up':>8} {'bubble':>7} {'theory':>7} {'max rel |Δw|':>13}")
    for row in rows:
        rs = row["ranks"]
        bubble = (f"{row['bubble_measured']:>7.1%} {row['bubble_theory']:>7.1%}" if row["bubble_theory"] is not None
                  else f"{'–':>7} {'–':>7}")
        print(f"{row['label']:<9} {max(r['model_states_total'] for r in rs):>12} "
              f"{max(r['model_states_estimate'] for r in rs):>9} {max(r['peak'] for r in rs):>9} "
              f"{max(r['bytes_sent'] for r in rs):>10} {max(r['bytes_sent_estimate'] for r in rs):>9} "
              f"{row['step_ms']:>8.2f} {ref['step_s'] * MS_PER_S / row['step_ms']:>7.2f}× {bubble} "
              f"{row['max_rel_diff']:>13.1e}")


def run(comm, out_dir) -> dict:
    out_dir = Path(out_dir)
    tour = comm.size
    world = ranks_used(tour)
    chosen = batch_layouts(world) if world else []
    skipped = [lay for lay in layouts(world) if lay not in chosen] if world else []
    if world and world < tour:
        # why: the layouts run on the first ``world`` ranks; the others sit the chapter out
        comm = first_ranks(comm, world, "3D")
        if comm is None:
            return {}
    ref = reference() if comm.rank == 0 and chosen else None      # one rank: only rank 0 compares
    results = {lay: measure(comm, *lay) for lay in chosen}
    if comm.rank != 0:
        return {}
    out_dir.mkdir(parents=True, exist_ok=True)
    files = [plot_grid_map(MAP, out_dir / "10_grid_map.png", rank=MAP_RANK, n_layer=MODEL["n_layer"],
                           n_head=MODEL["n_head"])]
    out = {"grid_map": rank_map(MAP, MODEL["n_layer"], MODEL["n_head"]), "map_shape": MAP, "map_rank": MAP_RANK}
    print(f"the rank map of {MAP.table()}\n(rank {MAP_RANK}'s groups: " + ", ".join(
        f"{d} {list(MAP.group_of(MAP_RANK, d))}" for d in ("tp", "dp", "pp")) + f"; figure {files[0]})")
    if not chosen:
        print("the layouts need at least 2 ranks; run the tour with --world-size 4")
        return {**out, "files": [str(f) for f in files]}
    if world < tour:
        print(f"\nthe layouts run on the first {world} of the tour's {tour} ranks: no DP × TP × PP layout of "
              f"{tour} ranks splits the global batch of {GLOBAL_MICRO} sequences over dp, the {MODEL['n_head']} "
              f"heads over tp and the {MODEL['n_layer']} layers over pp")
    for dp, tp, pp in skipped:
        print(f"\nDP {dp} × TP {tp} × PP {pp} is not run: {dp} data-parallel ranks do not split the global batch "
              f"of {GLOBAL_MICRO} sequences per micro-step evenly")
    rows = [summarise(*lay, results[lay], ref) for lay in chosen]
    tokens = GLOBAL_MICRO * MICRO_STEPS * SEQ
    flops = training_flops(ref["n_params"], tokens, MODEL["n_layer"], MODEL["n_embd"], SEQ)["flops"]
    compute_only_ms = flops / (world * DEVICE["flops"]) * MS_PER_S
    print(f"\ntiny GPT: {MODEL['n_layer']} layers, h = {MODEL['n_embd']}, {MODEL['n_head']} heads, s = {SEQ}, "
          f"float64, Adam; global batch {GLOBAL_MICRO} sequences × {MICRO_STEPS} micro-steps; {STEPS} steps on "
          f"{world} ranks of a {DEVICE['name']} device. Estimate: minidist.estimate.grid3d.estimate_for_config")
    for row in rows:
        print_layout(row)
    print_summary(rows, ref, compute_only_ms)
    print("(the model states and bytes equal the estimate on every rank; the bubble is above (p−1)/(m+p−1), "
          "which assumes equal stages: the last stage also runs the LM head and the loss, and the others wait for it)")
    files.append(plot_layouts(rows, out_dir / "10_layouts.png", compute_only=compute_only_ms,
                              one_rank=ref["step_s"] * MS_PER_S,
                              title=f"{'The' if skipped else 'Every'} DP × TP × PP layout{'s' if skipped else ''} "
                                    f"of {world} ranks: one step of the same tiny GPT "
                                    f"and global batch, measured beside the estimate"))
    return {**out, "layouts": rows, "reference_step_ms": ref["step_s"] * MS_PER_S, "ranks_used": world,
            "skipped": skipped, "compute_only_ms": compute_only_ms, "files": [str(f) for f in files]}
