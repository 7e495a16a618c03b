"""How many ranks a laptop can simulate: DDP and ZeRO-3 steps of a tiny GPT on 1 … 64 ranks.

    python benchmarks/bench_scaling.py [--worlds 1 4 16 64] [--steps 3] [--repeats 3]
    mpirun -n N python benchmarks/bench_scaling.py          # DP weak-scaling efficiency

The model is the train CLI's default GPT made tiny (2 layers, width 32, 16 sequences per
rank), and NumPy's BLAS runs one thread per rank (``minidist.demo.threads``: OpenBLAS's own
threads inside p rank threads would spin against them) unless ``OMP_NUM_THREADS`` says
otherwise. Without mpirun, each (strategy, world size) runs in a fresh child process of
``world`` in-process ranks (threads), so that each one's peak memory is its own; the child
builds every rank's trainer, takes one warm-up step, then ``--repeats`` times ``--steps``
steps between two barriers. It prints per world size:

* **s/step**: wall time per training step of the whole simulated world (median over the
  repeats, then the spread min–max);
* **CPU s/step**: the process's CPU time per step (``time.process_time``, all its threads:
  what the step cost, leaving out the time it waited for a core on a busy machine; the GIL
  lets the rank threads use little more than one core);
* **msgs/step**: point-to-point messages sent per step, all ranks together (a ring
  collective on p ranks sends p·(p−1) or 2·p·(p−1) of them: this grows as p²);
* **µs/msg**: wall time per step divided by messages per step (at few ranks the step is
  mostly compute, so this is large there and falls with p);
* **µs/msg ring**: the messages alone — ring all-reduces on the same world, timed after the
  steps, whose every message is 1 KiB whatever p, per message. It stays flat in p when a
  message costs the same whatever the world size (the target: within 2× from 4 to 64 ranks),
  and grows if the backend scans the world or wakes every rank at each message;
* **ms/rank-step**: wall time per step divided by p (a rank's compute is fixed: this grows
  only with the messages per rank);
* **setup s**: building every rank's model, optimizer and strategy; **peak RSS**: the
  child process's peak resident memory (``ru_maxrss``).

Under ``mpirun -n N`` each rank is a process: it times the 1-rank step (rank 0 alone, the
others waiting) and then the N-rank step, both with the same per-rank batch, and prints the
weak-scaling efficiency ``t(1) / t(N)`` (1.0: perfect; the target on N cores is ≥ 0.85).
The machine this runs on is usually shared: read ratios from one run, and the spread.
"""
from __future__ import annotations

import argparse
import json
import os
import pathlib
import resource
import statistics
import subprocess
import sys
import time

import numpy as np

import minidist
from minidist import distributed as dist
from minidist._malloc import tune_process
from minidist.defaults import DDP, STRATEGY_LABELS, ZERO3, ZERO_STAGES
from minidist.demo.threads import tour_blas_threads
from minidist.training.trainer import Trainer

STRATEGIES = (DDP, ZERO3)
RING_BYTES = 1024                     # the messages-alone timing: every message this size, at every p,
RING_MESSAGES = 8000                  # and about this many of them per repeat (at least 3 all-reduces)


def config(strategy: str) -> dict:
    """The train CLI's defaults with a tiny model: 2 layers, width 32 (16 sequences per rank)."""
    return {"model": {"n_layer": 2, "n_embd": 32}, "zero_optimization": {"stage": ZERO_STAGES[strategy]}}


def rank_main(comm, strategy: str, steps: int, repeats: int, barrier=None) -> dict:
    """Build this rank's trainer, take a warm-up step, then time ``repeats`` × ``steps`` steps
    between barriers (every rank starts and ends each repeat together). ``barrier``: a
    callable; None is ``dist.barrier(comm)``, what in-process ranks need (they pass the run
    token on only while they wait for a message: see :mod:`minidist.distributed.inproc`)."""
    if barrier is None:
        barrier = (lambda: dist.barrier(comm)) if comm.size > 1 else (lambda: None)
    barrier()
    t0 = time.perf_counter()
    trainer = Trainer(config(strategy), comm)
    barrier()
    setup = time.perf_counter() - t0
    trainer.train_step(0)                                  # warm-up: first allocations, caches
    times, cpu, step = [], [], 1
    for _ in range(repeats):
        barrier()
        t0, c0 = time.perf_counter(), time.process_time()
        for _ in range(steps):
            trainer.train_step(step)
            step += 1
        barrier()
        times.append((time.perf_counter() - t0) / steps)
        cpu.append((time.process_time() - c0) / steps)
    messages = len(trainer.step_log.messages()) if trainer.step_log is not None else 0
    ring_times, ring_messages = [], 0
    if comm.size > 1:          # the messages alone: ring all-reduces whose every message is RING_BYTES
        grads = np.ones(comm.size * RING_BYTES // 4, np.float32)
        calls = max(3, RING_MESSAGES // (2 * comm.size * (comm.size - 1)))    # 2·p·(p−1) messages each
        dist.all_reduce(comm, grads)
        for _ in range(repeats):
            barrier()
            t0, mark = time.perf_counter(), comm.log.mark()
            for _ in range(calls):
                dist.all_reduce(comm, grads)
            ring_messages = len(comm.log.since(mark).messages()) // calls     # before the barrier's own
            barrier()
            ring_times.append((time.perf_counter() - t0) / calls)
    return {"times": times, "cpu": cpu, "setup": setup, "messages": messages, "ring_times": ring_times,
            "ring_messages": ring_messages, "rss_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}


def in_process(strategy: str, world: int, steps: int, repeats: int) -> dict:
    """One (strategy, world size) on ``world`` in-process ranks: the numbers of the whole world."""
    tune_process()                                          # as the train CLI does
    with tour_blas_threads():         # as the demo does: BLAS threads in every rank would spin against the ranks
        if world == 1:
            ranks = [rank_main(dist.single_rank_comm(), strategy, steps, repeats)]
        else:
            ranks = dist.spawn(rank_main, world, strategy, steps, repeats)
    return world_numbers(ranks)


def world_numbers(ranks: list) -> dict:
    """The whole world's numbers from every rank's: rank 0's times (all ranks start and end
    together), messages summed over the ranks, the largest peak memory."""
    return {"times": ranks[0]["times"], "cpu": ranks[0]["cpu"], "setup": ranks[0]["setup"],
            "messages": sum(r["messages"] for r in ranks),
            "ring_times": ranks[0]["ring_times"], "ring_messages": sum(r["ring_messages"] for r in ranks),
            "rss_kib": max(r["rss_kib"] for r in ranks)}


def _child(strategy: str, world: int, steps: int, repeats: int) -> dict:
    """Run :func:`in_process` in a fresh interpreter (its own peak memory), return its numbers."""
    cmd = [sys.executable, __file__, "--child", strategy, str(world), "--steps", str(steps),
           "--repeats", str(repeats)]
    root = str(pathlib.Path(minidist.__file__).resolve().parents[1])      # the child imports this minidist
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([root] + [p for p in [os.environ.get("PYTHONPATH")] if p]))
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, env=env).stdout
    return json.loads(out.strip().splitlines()[-1])


def row(world: int, r: dict) -> str:
    t, ring = statistics.median(r["times"]), statistics.median(r["ring_times"]) if r["ring_messages"] else None
    cells = [f"{world:>5} {t:>8.3f} {min(r['times']):>7.3f}–{max(r['times']):<7.3f} "
             f"{statistics.median(r['cpu']):>10.3f} {r['messages']:>9}",
             f"{t / r['messages'] * 1e6:>8.1f}" if r["messages"] else f"{'-':>8}",
             f"{ring / r['ring_messages'] * 1e6:>12.1f}" if ring else f"{'-':>12}",
             f"{t / world * 1e3:>12.1f} {r['setup']:>8.2f} {r['rss_kib'] / 2**20:>9.2f}"]
    return " ".join(cells)


def report(strategy: str, results: dict) -> None:
    print(f"\n{STRATEGY_LABELS[strategy]}: per step, the whole world (median of the repeats, spread min–max)")
    print(f"{'ranks':>5} {'s/step':>8} {'spread':^15} {'CPU s/step':>10} {'msgs/step':>9} {'µs/msg':>8} "
          f"{'µs/msg ring':>12} "
          f"{'ms/rank-step':>12} {'setup s':>8} {'peak GiB':>9}")
    for world, r in results.items():
        print(row(world, r))
    worlds = [w for w in results if results[w]["ring_messages"]]
    if len(worlds) >= 2:
        lo, hi = worlds[0], worlds[-1]
        per = {w: statistics.median(results[w]["ring_times"]) / results[w]["ring_messages"] for w in (lo, hi)}
        print(f"µs/msg of the ring alone at {hi} ranks / at {lo} ranks: {per[hi] / per[lo]:.2f}× (target ≤ 2×)")


def _sleep_until_all(world) -> None:
    """A barrier that sleeps instead of spinning (MPI's Barrier would keep the waiting ranks on
    the cores the 1-rank run needs)."""
    req = world.Ibarrier()
    while not req.Test():
        time.sleep(1e-3)


def mpi_main(args) -> None:
    """Under mpirun: the 1-rank step (rank 0 alone) and the N-rank step, per strategy."""
    from mpi4py import MPI

    world = MPI.COMM_WORLD
    comm = dist.init()
    tune_process()
    with tour_blas_threads():
        _mpi_strategies(args, world, comm)


def _mpi_strategies(args, world, comm) -> None:
    """Per strategy: the 1-rank step on rank 0 while the others sleep, then the N-rank step."""
    for strategy in args.strategies:
        one = rank_main(dist.single_rank_comm(), strategy, args.steps, args.repeats) \
            if comm.rank == 0 else None
        _sleep_until_all(world)                  # the others sleep while rank 0 runs alone
        mine = rank_main(comm, strategy, args.steps, args.repeats, world.Barrier)
        ranks = dist.gather_object(comm, mine)
        if comm.rank == 0:
            t1, tn = statistics.median(one["times"]), statistics.median(ranks[0]["times"])
            msgs = sum(r["messages"] for r in ranks)
            print(f"{STRATEGY_LABELS[strategy]}: 1 rank {t1:.3f} s/step, {comm.size} ranks {tn:.3f} s/step "
                  f"(spread {min(ranks[0]['times']):.3f}–{max(ranks[0]['times']):.3f}), {msgs} msgs/step, "
                  f"peak RSS per rank {max(r['rss_kib'] for r in ranks) / 2**10:.0f} MiB; "
                  f"weak-scaling efficiency {t1 / tn:.2f}", flush=True)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--worlds", type=int, nargs="+", default=[1, 4, 16, 64])
    ap.add_argument("--strategies", nargs="+", choices=STRATEGIES, default=list(STRATEGIES))
    ap.add_argument("--steps", type=int, default=3, help="timed steps per repeat")
    ap.add_argument("--repeats", type=int, default=3, help="repeats (the median and the spread are printed)")
    ap.add_argument("--child", nargs=2, metavar=("STRATEGY", "WORLD"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        print(json.dumps(in_process(args.child[0], int(args.child[1]), args.steps, args.repeats)))
        return
    if dist.is_mpi_launch():
        mpi_main(args)
        return
    print(f"{args.steps} steps × {args.repeats} repeats per world size; in-process ranks (threads), "
          f"one child process per row")
    for strategy in args.strategies:
        report(strategy, {w: _child(strategy, w, args.steps, args.repeats) for w in args.worlds})


if __name__ == "__main__":
    main()
