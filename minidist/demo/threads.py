"""One BLAS thread per rank while the tour runs.

The tour's ranks are threads of one process (or, under ``mpirun``, one process per core or
more), and each calls NumPy's matmuls on tiny matrices. A multi-threaded BLAS (NumPy's wheels
ship OpenBLAS with one thread per core) then starts its own threads inside every rank's call,
and they spin-wait for the next call while the other ranks want the same cores: on 2 cores the
precision chapter spends about 4× the CPU time with OpenBLAS's default threads than with one.
``OMP_NUM_THREADS=1`` would prevent it, but only if set before NumPy loads its BLAS, which
``python -m minidist.demo`` has already done by the time it parses its flags; so the tour asks
the loaded library directly, as threadpoolctl does (Linux: the libraries mapped into the
process; elsewhere nothing changes).

Like :func:`minidist._malloc.tune_malloc` this sets the whole process, so only the command
that owns it calls it (``python -m minidist.demo``), never ``import minidist``; an explicit
``OMP_NUM_THREADS`` or ``OPENBLAS_NUM_THREADS`` in the environment is left as the user set it.
"""
from __future__ import annotations

import ctypes
import os

# the thread-count setters of the BLAS builds NumPy ships or links: OpenBLAS (plain, 64-bit
# interface, scipy-openblas's prefixed names) and MKL
_SETTERS = ("openblas_set_num_threads", "openblas_set_num_threads64_", "scipy_openblas_set_num_threads64_",
            "scipy_openblas_set_num_threads", "MKL_Set_Num_Threads")
_ENV = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


def _loaded_blas() -> list[str]:
    """Paths of the BLAS libraries mapped into this process (Linux; [] elsewhere)."""
    import numpy  # noqa: F401  - NumPy loads its BLAS on import
    try:
        with open("/proc/self/maps") as f:
            paths = {line.split()[-1] for line in f if line.rstrip().endswith(".so") or ".so." in line}
    except OSError:
        return []
    return sorted(p for p in paths if "blas" in os.path.basename(p).lower() or "mkl_rt" in p)


def single_threaded_blas() -> int:
    """Set every loaded BLAS to one thread, unless the environment chose a count; returns how
    many libraries were set (0: none found, or the user's setting kept)."""
    if any(os.environ.get(v) for v in _ENV):
        return 0
    done = 0
    for path in _loaded_blas():
        try:
            lib = ctypes.CDLL(path)
        except OSError:
            continue
        for name in _SETTERS:
            setter = getattr(lib, name, None)
            if setter is not None:
                setter(1)
                done += 1
                break
    return done
