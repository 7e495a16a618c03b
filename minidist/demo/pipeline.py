"""Chapter: pipeline schedules (GPipe, 1F1B, interleaved, zero bubble, V schedules).

Every schedule of :mod:`minidist.parallel.pipeline` trains one real step of the same tiny
GPT on the tour's ranks (4 pipeline ranks by default), on a compute-bound device — a slow
chip (1 GFLOP/s) with nearly free links — so the idle time is the schedule's and not the
wire's. For each run the chapter prints, beside the estimator's theory
(:func:`minidist.estimate.pipeline_bubble`, T_F = T_B = T_W, synchronous flush):

* the bubble measured on the simulated clock, 1 − Σ busy / (ranks × step time);
* the peak in-flight micro-batches per rank measured by the memory tracker;
* the step time.

Figures: ``06_pipeline_schedules.png`` — for every schedule the planned Gantt chart (the
schedule's own data with F = B = W = 1 per stage of L/p layers, a chunk's pass 1/chunks of
that, so all are drawn to one scale) above the executed timeline (each rank's actions on
the simulated clock); ``06_bubble_vs_microbatches.png`` — bubble theory and measured as the
micro-batches per step grow.

Why measured and theory differ a little (the chapter prints the times): F, B and W do not
take exactly equal times (attention and softmax have no weights, so W is lighter than B),
and the last stage also computes the loss. zb_v is built for equal times here (the
config's ``parallel.pass_times`` unset).
Why the measured in-flight count can be lower: after a split ``B`` the activations only
the input gradient needed are freed; a micro-batch waiting for its ``W`` holds the rest.
"""
from __future__ import annotations

from .. import distributed as dist
from ..defaults import ZB_H1
from ..device import Device
from ..estimate.pipeline import pipeline_bubble, runnable
from ..parallel.pipeline import build_schedule, chunks_per_rank, simulate
from ..parallel.pipeline.engine import bubble_from_ranks
from ..plotting.pipeline import plot_bubble_vs_microbatches, plot_schedules
from ..training.trainer import Trainer

TITLE = "Pipeline schedules"

# a compute-bound chip: a slow 1 GFLOP/s device whose links are almost free (α = 1 ns, 10 TB/s)
DEVICE = {"name": "compute-bound (1 GFLOP/s)", "flops": 1e9, "alpha": 1e-9, "beta": 1e13}
EMBD, HEADS, SEQ, MICRO = 64, 2, 8, 2        # hidden, heads, sequence, micro-batch rows
V = 2                                        # model chunks per rank of interleaved_1f1b (the V schedules: 2)
MS_PER_S = 1e3
TABLE_M = 2                                  # the table's micro-batches: TABLE_M × ranks (the V schedules' least)


def config(name: str, p: int, m: int) -> dict:
    """The tiny GPT, 2 layers per rank (one per chunk of the 2-chunk schedules), float32."""
    return {"model": {"n_layer": 2 * p, "n_embd": EMBD, "n_head": HEADS, "block_size": SEQ},
            "data": {"dataset": "copy", "n_digits": 3, "seq_len": SEQ}, "dtype": "float32",
            "train_micro_batch_size_per_gpu": MICRO, "gradient_accumulation_steps": m, "steps": 1,
            "optimizer": {"type": "Adam", "params": {"lr": 1e-3}}, "device": DEVICE,
            "parallel": {"pipeline": p, "schedule": name, "virtual_stages": chunks_per_rank(name, V)}}


def measure(comm, name: str, m: int):
    """One pipelined step of ``name`` with m micro-batches on a fresh device per rank; every
    rank's measurements (the engine's ``measured()``) on rank 0, None elsewhere."""
    comm = comm.dup()
    comm.device = Device(DEVICE, rank=comm.rank)
    trainer = Trainer(config(name, comm.size, m), comm)
    trainer.train_step(0)
    # why: rank 0 prints and plots every rank's timeline; each rank measured only its own
    return dist.gather_object(comm, trainer.pipeline.measured(), root=0)


def summarise(name: str, p: int, m: int, ranks: list) -> dict:
    """A table row: the estimator's theory beside what the ranks measured."""
    theory = pipeline_bubble(name, p, m, V)
    t0 = min(r["t_begin"] for r in ranks)
    return {"schedule": name, "m": m, "bubble_theory": theory["bubble_fraction"],
            "bubble_measured": bubble_from_ranks(ranks),
            "in_flight_theory": theory["peak_in_flight_per_rank"],
            "in_flight_measured": [r["peak_in_flight"] for r in ranks],
            "step_ms": (max(r["t_end"] for r in ranks) - t0) * MS_PER_S,
            # executed timeline, ms from the step's start: (rank, op, micro-batch, chunk, start, end)
            "executed": [(r["pp_rank"], op, i, s, (a - t0) * MS_PER_S, (b - t0) * MS_PER_S)
                         for r in ranks for op, i, s, a, b in r["timeline"]]}


def planned(name: str, p: int, m: int) -> list:
    """The schedule's own Gantt chart: its simulation with F = B = W = 1 per stage of L/p layers
    (a chunk's pass 1/chunks of that, so every schedule is drawn to the same scale)."""
    tl = simulate(build_schedule(name, p, m, chunks_per_rank(name, V)))
    return [(r, a.op, a.micro_batch, a.stage, t0, t1) for r, events in enumerate(tl.events) for a, t0, t1 in events]


def op_times(row: dict, p: int) -> list:
    """Per rank, the mean executed time of its F, B and W actions in ms."""
    out = []
    for rank in range(p):
        spans: dict = {}
        for r, op, _, _, start, end in row["executed"]:
            if r == rank:
                spans.setdefault(op, []).append(end - start)
        out.append({op: sum(v) / len(v) for op, v in spans.items()})
    return out


def run(comm, out_dir) -> dict:
    p = comm.size
    if p < 2:
        if comm.rank == 0:
            print("pipeline schedules need at least 2 ranks; run the tour with --world-size 4")
        return {}
    sweep = []
    for m in (p, 2 * p, 4 * p):
        for name in runnable(p, m):
            ranks = measure(comm, name, m)
            if comm.rank == 0:
                sweep.append(summarise(name, p, m, ranks))
    if comm.rank != 0:
        return {}
    table = [r for r in sweep if r["m"] == TABLE_M * p]
    for r in table:
        r["planned"] = planned(r["schedule"], p, r["m"])
    print(f"tiny GPT: {2 * p} layers (2 per rank), h={EMBD}, s={SEQ}, b={MICRO}, float32, on {p} pipeline ranks of "
          f"a {DEVICE['name']} device; m = {TABLE_M * p} micro-batches; theory: T_F = T_B = T_W, synchronous flush")
    print(f"{'schedule':<18} {'bubble theory':>13} {'measured':>9}   {'peak in flight per rank: theory':<34}"
          f"{'measured':<26} {'step ms':>8}")
    for r in table:
        theory = " ".join(f"{x:g}" for x in r["in_flight_theory"])
        measured = " ".join(f"{x:.2f}" for x in r["in_flight_measured"])
        print(f"{r['schedule']:<18} {r['bubble_theory']:>13.1%} {r['bubble_measured']:>9.1%}   {theory:<34}"
              f"{measured:<26} {r['step_ms']:>8.2f}")
    print("mean time per action on each rank, ms (zb_h1): " + "; ".join(
        f"rank {rank}: " + " ".join(f"{op} {t:.3f}" for op, t in times.items())
        for rank, times in enumerate(op_times(next(r for r in table if r["schedule"] == ZB_H1), p))))
    print("(measured in flight below theory: after a split B only what W needs stays; "
          "zb_h2 and zb_v reach the paper's 0 only without the flush)")
    plot_schedules(table, p, out_dir / "06_pipeline_schedules.png")
    plot_bubble_vs_microbatches(sweep, p, out_dir / "06_bubble_vs_microbatches.png")
    return {"rows": table, "sweep": sweep}
