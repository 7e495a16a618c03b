"""Chapter: collectives, built from send/recv, measured byte by byte.

Every rank takes part (collectives need all of them); rank 0 prints and draws. Every
number comes from a run: each algorithm is executed on the world it is given, on a fresh
simulated device (so the run starts at t = 0), and its message log is read back. Large
messages are emulated with ``bytes_per_element`` — 1024 real elements on the wire
*counted* as n bytes — so a 64 MiB all-reduce takes milliseconds of real time.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .. import distributed as dist
from ..defaults import DEFAULT_DEVICE
from ..device import Device
from ..distributed import cost
from ..distributed.all_reduce import ring_states
from ..distributed.log import MessageLog
from ..plotting import collectives as plots

TITLE = "Collectives"
SPEC = DEFAULT_DEVICE
ELEMS = 1024                                   # real float32 elements per measurement
SIZES = [1 << k for k in range(10, 27, 2)]     # 1 KiB … 64 MiB (emulated)


def _measure(comm, op, algorithm, nbytes):
    """Run one collective on a fresh simulated device; returns (seconds, bytes sent) of this rank."""
    comm.device = Device(SPEC, rank=comm.world_rank(), trace=False)   # t = 0 on every rank
    comm.log = MessageLog()
    p = comm.size
    if op == "all_gather":                     # n is the gathered size: each rank gives n/p
        x = np.ones(ELEMS // p, dtype=np.float32)
        dist.all_gather(comm, x, algorithm=algorithm, bytes_per_element=nbytes / (p * x.size))
    elif op == "all_to_all":                   # n is one rank's p blocks together
        x = np.ones((p, ELEMS // p), dtype=np.float32)
        dist.all_to_all(comm, x, algorithm=algorithm, bytes_per_element=nbytes / x.size)
    else:
        x = np.ones(ELEMS, dtype=np.float32)
        dist.COLLECTIVES[op](comm, x, algorithm=algorithm, bytes_per_element=nbytes / ELEMS)
    return comm.log.collectives[-1].t_end, comm.log.bytes_sent()


def _slowest(comm, values):
    """Element-wise max over ranks: the collective ends when its slowest rank does."""
    return dist.all_reduce(comm, np.asarray(values, dtype=np.float64), op="max", algorithm="recursive_doubling")


def run(comm, out_dir) -> dict:
    out_dir = Path(out_dir)
    p, algos = comm.size, dist.algorithms("all_reduce")
    bench = comm.dup()                         # a private communicator we may give fresh devices

    # 1. all-reduce algorithms vs message size on this world
    runs = [(alg, n) for alg in algos for n in SIZES]
    times = _slowest(comm, [_measure(bench, "all_reduce", alg, n)[0] for alg, n in runs])
    size_rows = [{"algorithm": a, "nbytes": n, "p": p, "seconds": t} for (a, n), t in zip(runs, times)]

    # 2. ... and vs world size: sub-communicators of the first k ranks
    world_nbytes, world_rows = 1 << 20, []
    for k in range(2, p + 1):
        sub = bench.split(color=0 if comm.rank < k else None)
        ts = [_measure(sub, "all_reduce", alg, world_nbytes)[0] for alg in algos] if sub else [0.0] * len(algos)
        world_rows += [{"algorithm": a, "nbytes": world_nbytes, "p": k, "seconds": t}
                       for a, t in zip(algos, _slowest(comm, ts))]

    # 3. bytes per rank of every algorithm with a textbook formula, at n = 1 MiB
    n = 1 << 20
    keys = list(cost.SENT)
    sent = _slowest(comm, [_measure(bench, op, alg, n)[1] for op, alg in keys])

    # 4. one ring all-reduce's messages, gathered to rank 0 for the timeline
    _measure(bench, "all_reduce", "ring", 1 << 22)
    mine = np.array([(e.t_start, e.t_end, i) for i, e in enumerate(bench.log.messages())])   # (2(p-1), 3)
    timeline = dist.gather(comm, mine, root=0)
    if comm.rank != 0:
        return {}

    table = {}
    print(f"bytes sent by the busiest rank, p = {p}, n = 1 MiB (float32 emulated), vs the textbook:")
    print(f"  {'collective[algorithm]':<36}{'measured':>12}{'textbook':>12}   formula")
    for (op, alg), got in zip(keys, sent):
        want = cost.bytes_sent(op, alg, n, p)
        table[f"{op}[{alg}]"] = {"measured": int(got), "textbook": want, "formula": cost.FORMULA[op, alg]}
        print(f"  {op + '[' + alg + ']':<36}{int(got):>12,}{want:>12,.0f}   {cost.FORMULA[op, alg]}")

    ring = {r["nbytes"]: r["seconds"] for r in size_rows if r["algorithm"] == "ring"}
    rd = {r["nbytes"]: r["seconds"] for r in size_rows if r["algorithm"] == "recursive_doubling"}
    measured_x = next((s for s in SIZES if ring[s] < rd[s]), None)
    model_x = cost.crossover("all_reduce", "recursive_doubling", "ring", p, SPEC)
    print(f"\nsimulated all-reduce time on {p} ranks (µs):")
    print(f"  {'bytes':>10}" + "".join(f"{a:>20}" for a in algos))
    for s in SIZES:
        print(f"  {s:>10}" + "".join(f"{r['seconds'] * 1e6:>20.1f}" for r in size_rows if r["nbytes"] == s))
    if model_x:
        print(f"ring overtakes recursive doubling from {measured_x} bytes (simulated); "
              f"α-β model crossover at {model_x:,.0f} bytes")
    model = {a: (SIZES, [cost.time("all_reduce", a, s, p, SPEC) for s in SIZES]) for a in algos}
    errs = [abs(r["seconds"] / model[r["algorithm"]][1][SIZES.index(r["nbytes"])] - 1)
            for r in size_rows if r["algorithm"] == "ring"]

    plots.plot_collective_operators(out_dir / "collectives_operators.png", p=p)
    plots.plot_ring_allreduce(ring_states(p), out_dir / "collectives_ring_allreduce_steps.png")
    plots.plot_algorithm_times(size_rows, p, world_rows, world_nbytes, out_dir / "collectives_algorithms.png",
                               model=model, crossover=model_x)
    plots.plot_bytes_per_rank([{"label": k, **v} for k, v in table.items()], out_dir / "collectives_bytes.png")
    plots.plot_message_timeline(list(timeline), out_dir / "collectives_ring_timeline.png",
                                title=f"Ring all-reduce of 4 MiB on {p} ranks, every message sent (steps 0–{p - 2}: "
                                      f"reduce-scatter, {p - 1}–{2 * p - 3}: all-gather)")
    return {"bytes_per_rank": table, "crossover_bytes_measured": measured_x, "crossover_bytes_model": model_x,
            "ring_model_max_rel_error": max(errs), "size_rows": size_rows, "world_rows": world_rows}
