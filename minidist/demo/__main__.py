"""``python -m minidist.demo`` — the guided tour, one chapter per topic.

On 4 in-process ranks by default; ``mpirun -n 4 python -m minidist.demo`` runs the same
tour on 4 MPI processes. Each chapter prints its tables on rank 0 and writes its figures
into ``figures/`` (or ``--out DIR``). ``--chapters memory,collectives`` picks chapters.
"""
from __future__ import annotations

import argparse
import importlib
import sys
import time
from pathlib import Path

from .. import distributed as dist
from .. import plotting
from .._malloc import tune_process
from .jobs import job_processes
from .threads import tour_blas_threads

_STARTED = time.perf_counter()          # the start-up row of the budget: imports and spawning the ranks

# (short name, module) in tour order; a chapter module has TITLE and run(comm, out_dir) -> dict
CHAPTERS = [
    ("memory", "minidist.demo.memory_anatomy"),
    ("collectives", "minidist.demo.collectives"),
    ("zero", "minidist.demo.zero"),
    ("precision", "minidist.demo.mixed_precision"),
    ("distillation", "minidist.demo.distillation"),
    ("tensor", "minidist.demo.tensor_parallel"),
    ("pipeline", "minidist.demo.pipeline"),
    ("3d", "minidist.demo.grid3d"),
    ("checkpointing", "minidist.demo.checkpointing"),
    ("inference", "minidist.demo.inference"),
    ("compression", "minidist.demo.compression"),
    ("moe", "minidist.demo.moe"),
    ("peft", "minidist.demo.peft"),
    ("context", "minidist.demo.context"),
]


def available_chapters() -> list[tuple[str, object]]:
    """The chapters whose modules are present in this version, imported."""
    found = []
    for name, module in CHAPTERS:
        try:
            found.append((name, importlib.import_module(module)))
        except ModuleNotFoundError as e:
            if e.name != module:
                raise
    return found


# the whole tour's wall-time budget on 2 cores: 4 in-process ranks, and mpirun -n 4 (4 processes
# starting MPI, each importing NumPy and matplotlib)
BUDGET_S, MPI_BUDGET_S = 60.0, 90.0
# how long a rank may wait for another: rank 0 alone trains a teacher, prints and draws while the
# others wait at the next collective, which on a loaded machine can pass the default 60 s
WAIT_S = 600.0


def budget_table(seconds: dict, budget: float = BUDGET_S) -> str:
    """Each chapter's wall time and its share of the tour, and the total against the budget."""
    total = sum(seconds.values())
    lines = [f"{'chapter':<14}{'seconds':>9}{'share':>8}"]
    lines += [f"{name:<14}{t:>9.1f}{t / total if total else 0.0:>8.0%}" for name, t in seconds.items()]
    lines.append(f"{'total':<14}{total:>9.1f}{'':>8}  (budget {budget:.0f} s on 2 cores)")
    return "\n".join(lines)


def run_tour(comm, chapters: list[str], out_dir: Path) -> dict:
    """Run the chosen chapters on this rank; every rank calls it (collectives need all)."""
    found = available_chapters()
    results, seconds = {}, {"start-up": time.perf_counter() - _STARTED}
    for name, module in found:
        if name not in chapters:
            continue
        if comm.rank == 0:
            print(f"\n=== {module.TITLE} ===", flush=True)
        t0 = time.perf_counter()
        results[name] = module.run(comm, out_dir)
        dist.barrier(comm)
        seconds[name] = time.perf_counter() - t0
        if comm.rank == 0:
            print(f"({name}: {seconds[name]:.1f} s)", flush=True)
    if comm.rank == 0:
        waited = plotting.wait_for_figures()     # the last figures the worker draws
        if waited is not None:
            seconds["figures"] = waited
        budget = MPI_BUDGET_S if dist.is_mpi_launch() else BUDGET_S
        print("\n=== Time budget ===\n" + budget_table(seconds, budget), flush=True)
    return results


def main(argv=None) -> int:
    names = [n for n, _ in CHAPTERS]
    ap = argparse.ArgumentParser(prog="python -m minidist.demo", description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="figures", help="directory for the figures (default: figures/)")
    ap.add_argument("--world-size", type=int, default=None, help="in-process ranks when not under mpirun (default 4)")
    ap.add_argument("--chapters", default=",".join(names), help=f"comma-separated subset of {names}")
    args = ap.parse_args(argv)
    chosen = [c.strip() for c in args.chapters.split(",") if c.strip()]
    unknown = sorted(set(chosen) - set(names))
    if unknown:
        ap.error(f"unknown chapter(s) {unknown}; choose from {names}")
    if args.world_size is not None and args.world_size < 1:
        ap.error(f"--world-size must be >= 1, got {args.world_size}")
    if dist.is_mpi_launch() and args.world_size is not None:
        from mpi4py import MPI       # here: importing mpi4py initialises MPI, wanted only under mpirun
        world = MPI.COMM_WORLD.Get_size()
        if args.world_size != world:         # as python -m minidist.train: said once, by rank 0
            if dist.launch_rank() == 0:
                ap.error(f"--world-size {args.world_size} but mpirun started {world} processes: under mpirun the "
                         f"world is MPI's; drop --world-size or use mpirun -n {args.world_size}")
            return 2
    args.world_size = args.world_size or 4
    tune_process()  # a command owns its process: it may retune malloc and the GC; import minidist must not
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    # the ranks share the cores: BLAS threads in each would spin against them; figures are drawn
    # by a worker process while the tour goes on (minidist.plotting.background)
    with tour_blas_threads(), plotting.background():
        if dist.is_mpi_launch():
            dist.run_main(run_tour, chosen, out, timeout=WAIT_S)
        else:
            print(f"minidist tour on {args.world_size} in-process ranks (mpirun -n 4 python -m minidist.demo "
                  f"for real processes); figures in {out}/")
            with job_processes():       # the chapters' independent runs use every core (minidist.demo.jobs)
                dist.spawn(run_tour, args.world_size, chosen, out, timeout=WAIT_S)
    return 0


if __name__ == "__main__":
    sys.exit(main())
