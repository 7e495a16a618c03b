"""Run a stretch of code with OpenBLAS on one thread (``one_blas_thread``).

Attention multiplies B·nh small matrices (T × hs by hs × T) one BLAS call each. OpenBLAS
splits every call above ~2.6·10⁵ multiply-adds over all its threads, so with 2 threads each
of those calls wakes the second thread and waits for it: measured on a loaded 2-core
machine, 64 products of 128×32×128 took 50-60 ms of CPU time on 2 threads against 1-2 ms
on one. Inside ``with one_blas_thread():`` OpenBLAS uses one thread; the count is put back
when the last of the threads that entered leaves (the in-process backend's ranks are
threads of one process, and the count is the library's, so it is reference-counted under a
lock). Attention's numbers are those of one thread whatever the count. For its small
products that is also what two threads give (tests/test_engine_blas_threads.py); for large
float32 products it need not be: OpenBLAS takes other kernels on one thread and on several,
and measured on a 2-core AMD EPYC a (1024×256)·(256×768) float32 product differs in its last
bits between one thread and two (float64 products did not). Without OpenBLAS found next to
NumPy, or with one thread already, it does nothing.
"""
from __future__ import annotations

import contextlib
import ctypes
import functools
import glob
import os
import threading

import numpy as np


def _openblas():
    """(get_num_threads, set_num_threads) of the OpenBLAS NumPy links, or None."""
    here = os.path.dirname(np.__file__)
    for path in sorted(glob.glob(os.path.join(here, os.pardir, "numpy.libs", "*openblas*"))):
        try:
            lib = ctypes.CDLL(path)
        except OSError:
            continue
        for get, put in (("scipy_openblas_get_num_threads64_", "scipy_openblas_set_num_threads64_"),
                         ("scipy_openblas_get_num_threads", "scipy_openblas_set_num_threads"),
                         ("openblas_get_num_threads64_", "openblas_set_num_threads64_"),
                         ("openblas_get_num_threads", "openblas_set_num_threads")):
            if hasattr(lib, get) and hasattr(lib, put):
                getter, setter = getattr(lib, get), getattr(lib, put)
                getter.restype, setter.argtypes = ctypes.c_int, [ctypes.c_int]
                return getter, setter
    return None


_LOCK = threading.Lock()
_STATE = {"inside": 0, "saved": None}


@functools.lru_cache(maxsize=None)
def _library():
    """Found at the first use, not at import (``import minidist`` loads no library)."""
    return _openblas()


def blas_threads() -> int | None:
    """OpenBLAS's current thread count (None: not found)."""
    lib = _library()
    return int(lib[0]()) if lib is not None else None


@contextlib.contextmanager
def one_blas_thread():
    _LIB = _library()
    if _LIB is None or (_STATE["inside"] == 0 and _LIB[0]() <= 1):
        yield
        return
    with _LOCK:
        _STATE["inside"] += 1
        if _STATE["inside"] == 1:
            _STATE["saved"] = int(_LIB[0]())
            _LIB[1](1)
    try:
        yield
    finally:
        with _LOCK:
            _STATE["inside"] -= 1
            if _STATE["inside"] == 0:
                _LIB[1](_STATE["saved"])
