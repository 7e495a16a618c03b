"""Explicit ring all-reduce (minidist.distributed, Python on MPI point-to-point) vs MPI's Allreduce.

Run:  mpirun -n 4 python benchmarks/bench_allreduce.py [--algorithm ring] [--max-mb 64]

For float32 arrays of 1 KB … 64 MB it times both in the same job, on the same data, and
prints the wall-clock time of each (median over repetitions, slowest rank), their ratio and
the bus bandwidth of nccl-tests (``busbw = algbw · 2(p−1)/p`` with ``algbw = bytes/time``),
which is the same for every p when the link is the bottleneck. Results are checked equal.
The simulated α-β time of the ring is not what is measured here: this is the real machine.
"""
from __future__ import annotations

import argparse
import sys
import time

import numpy as np

from minidist import distributed as dist
from minidist._malloc import tune_malloc


def _timed(comm_mpi, fn, reps):
    """Median seconds of ``fn()`` over ``reps`` runs, the slowest rank's (all start together)."""
    times = []
    for _ in range(reps):
        comm_mpi.Barrier()
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return comm_mpi.allreduce(float(np.median(times)), op=__import__("mpi4py").MPI.MAX)


def main(comm, args):
    from mpi4py import MPI

    world, p = MPI.COMM_WORLD, comm.size
    sizes = [1 << k for k in range(10, 27, 2) if args.min_kb * 1024 <= (1 << k) <= args.max_mb * (1 << 20)]
    if comm.rank == 0:
        print(f"all-reduce of float32, {p} ranks, minidist '{args.algorithm}' vs MPI_Allreduce "
              f"(median of repetitions, slowest rank)")
        print(f"{'bytes':>10} {'minidist':>11} {'MPI':>11} {'ratio':>6} {'busbw minidist':>15} {'busbw MPI':>11}")
    rows = []
    for nbytes in sizes:
        x = np.random.default_rng(comm.rank).standard_normal(nbytes // 4).astype(np.float32)
        reps = max(3, min(args.reps, int(2e8 // nbytes)))
        ref = np.empty_like(x)
        ours = dist.all_reduce(comm, x, algorithm=args.algorithm)       # warm-up + correctness
        world.Allreduce(x, ref)
        assert np.allclose(ours, ref, rtol=1e-4, atol=1e-4), "minidist and MPI disagree"
        comm.log.clear()
        t_ours = _timed(world, lambda x=x: dist.all_reduce(comm, x, algorithm=args.algorithm), reps)
        t_mpi = _timed(world, lambda x=x, ref=ref: world.Allreduce(x, ref), reps)
        factor = 2 * (p - 1) / p
        row = (nbytes, t_ours, t_mpi, t_ours / t_mpi, nbytes / t_ours * factor / 1e9, nbytes / t_mpi * factor / 1e9)
        rows.append(row)
        if comm.rank == 0:
            print(f"{nbytes:>10} {t_ours * 1e3:>9.3f}ms {t_mpi * 1e3:>9.3f}ms {row[3]:>6.2f} "
                  f"{row[4]:>10.2f} GB/s {row[5]:>6.2f} GB/s", flush=True)
    if comm.rank == 0:
        large = [r[3] for r in rows if r[0] >= 4 << 20]
        if large:
            print(f"time ratio minidist/MPI for messages >= 4 MB: median {np.median(large):.2f} "
                  f"(target <= 1.2, limit 1.5)")
    return rows


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--algorithm", default="ring", choices=dist.algorithms("all_reduce"))
    parser.add_argument("--min-kb", type=float, default=1)
    parser.add_argument("--max-mb", type=float, default=64)
    parser.add_argument("--reps", type=int, default=20)
    args = parser.parse_args()
    tune_malloc()  # a command owns its process: it may retune malloc; import minidist must not
    if not dist.is_mpi_launch():
        sys.exit("run me under MPI: mpirun -n 4 python benchmarks/bench_allreduce.py")
    dist.run_main(main, args, timeout=300)
