"""Independent runs of a chapter (seeds, methods, formats) in worker processes.

Several chapters train a few small models that do not talk to each other — compression's
seeds, the fine-tuning methods, the precision chapter's three formats — and deal them over
the ranks. Under ``mpirun`` each rank is a process and two of them run at once on 2 cores.
The in-process tour's ranks are threads under one interpreter lock: their runs would take
turns on one core. Inside :func:`job_processes` (the in-process ``python -m minidist.demo``),
:func:`run_jobs` sends a rank's runs to a pool of worker processes, one per core, and waits
for them while the other ranks hand theirs in, so the runs of all ranks share every core.
A run is a module-level function of picklable arguments that builds its own model and
device and seeds its own generators, so its numbers do not depend on where it runs; the
results come back in the order of the calls. Outside the context, the calls run in place.
"""
from __future__ import annotations

import contextlib
import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor

from .. import distributed as dist

_POOL: dict = {"pool": None}


def _start_worker() -> None:
    """Each worker is a command's own process: one BLAS thread, and the tour's malloc and GC."""
    from .._malloc import tune_process
    from .threads import single_threaded_blas
    single_threaded_blas()
    tune_process()


@contextlib.contextmanager
def job_processes(workers: int | None = None):
    """Inside, :func:`run_jobs` runs its calls in ``workers`` processes (default: one per core)."""
    n = workers or max(1, min(4, os.cpu_count() or 1))
    pool = ProcessPoolExecutor(max_workers=n, mp_context=multiprocessing.get_context("spawn"),
                               initializer=_start_worker)
    for _ in range(n):            # start the workers now: they import minidist while the first chapters run
        pool.submit(int)
    _POOL["pool"] = pool
    try:
        yield pool
    finally:
        _POOL["pool"] = None
        pool.shutdown(wait=True, cancel_futures=True)


def run_jobs(calls: list) -> list:
    """``[fn(*args) for fn, *args in calls]``, in worker processes inside :func:`job_processes`."""
    pool = _POOL["pool"]
    if pool is None or not calls:
        return [fn(*args) for fn, *args in calls]
    futures = [pool.submit(fn, *args) for fn, *args in calls]
    with dist.let_others_run():          # a wait for processes, not a message: the other ranks hand theirs in
        return [f.result() for f in futures]
