"""One BLAS thread for the whole tour (unless the environment chose a count).

The tour's ranks are threads of one process (or, under ``mpirun``, processes sharing the
cores), and each calls NumPy's matmuls on tiny matrices. A multi-threaded BLAS (NumPy's wheels
ship OpenBLAS with one thread per core) starts its own threads inside every rank's call, and
they spin-wait for the next call while the other ranks want the same cores: on 2 cores the
precision chapter spent about 4× the CPU time with OpenBLAS's default threads than with one.
``OMP_NUM_THREADS=1`` would prevent it, but only if set before NumPy loads its BLAS, which
``python -m minidist.demo`` has done by the time it parses its flags; so the tour runs inside
:func:`minidist.ops.blas_threads.one_blas_thread` (the library's count, set through the
loaded OpenBLAS and put back afterwards; attention uses the same switch around its small
products). An ``OMP_NUM_THREADS`` or ``OPENBLAS_NUM_THREADS`` in the environment is the
user's choice and is kept.
"""
from __future__ import annotations

import contextlib
import os

from ..ops.blas_threads import one_blas_thread

_ENV = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


def tour_blas_threads():
    """Context manager: BLAS on one thread for what runs inside, unless the environment set a count."""
    if any(os.environ.get(v) for v in _ENV):
        return contextlib.nullcontext()
    return one_blas_thread()


_KEPT = contextlib.ExitStack()


def single_threaded_blas() -> bool:
    """BLAS on one thread for the rest of the process, unless the environment set a count
    (``python -m minidist.train`` on several ranks: a command that owns its process); True if set."""
    if any(os.environ.get(v) for v in _ENV):
        return False
    _KEPT.enter_context(one_blas_thread())
    return True
