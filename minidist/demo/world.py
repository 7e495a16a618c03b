"""The ranks a chapter runs on when the tour's world is not the one the chapter is built for.

The tour is written for 4 ranks (``mpirun -n 4``, or ``--world-size 4``), and most chapters
run on any world. A chapter whose layout fixes its ranks — the mixture of experts' expert
parallelism (E = 4 experts over ep ranks, DualPipeV on pipeline 2 × expert 2) or context
parallelism's cuts (a power of two of chunks) — runs on the first ranks that fit
(:func:`first_ranks`, a ``comm.split``: the other ranks skip it), or, when there are too few,
says so and skips itself instead of failing the tour.
"""
from __future__ import annotations


def first_ranks(comm, n: int, chapter: str):
    """A communicator of ranks 0..n−1 of ``comm`` (``comm`` itself when it has n ranks), None on the
    others, and None on every rank (rank 0 printing why) when ``comm`` has fewer than n ranks.
    Collective: every rank of ``comm`` calls it."""
    if comm.size < n:
        if comm.rank == 0:
            print(f"the {chapter} chapter needs {n} ranks and the tour has {comm.size}: skipped "
                  f"(run it with --world-size {n}, or mpirun -n {n})", flush=True)
        return None
    if comm.size == n:
        return comm
    return comm.split(0 if comm.rank < n else None)


def largest_power_of_two(n: int) -> int:
    """The largest power of two ≤ n (n ≥ 1)."""
    return 1 << (n.bit_length() - 1)
