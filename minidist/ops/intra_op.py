"""Intra-op threads: the elementwise work of one op split over threads, as PyTorch's
``torch.set_num_threads`` splits its CPU kernels (its "intra-op parallelism").

BLAS already runs a GEMM on several threads; everything else in a training step (GELU,
layer norm, attention's softmax, Adam) is NumPy calls on one thread, so with 2 cores the
step's non-GEMM third ran at 1 core's speed. NumPy releases the GIL inside its loops over
large arrays, so Python threads that each take a disjoint piece of an op's output run on
separate cores. :func:`parallel_for` cuts ``range(n)`` (blocks, rows, sequences) into one
contiguous piece per thread; every piece runs the same arithmetic, in the same order, as the
one-thread loop would on it, and no two pieces write the same element, so **every result is
bit-identical to one thread's** — only the wall time changes (OpenBLAS's own thread count is
another matter: it cuts a GEMM differently, which can move its last bits). Reductions across
pieces (a column sum over rows, say) stay on the calling thread.

What is split: attention's passes over a few sequences each (:mod:`.attention`) and GELU's
cache-sized blocks (:mod:`.activations`), the two that gain. Layer norm's rows and Adam's
blocks were tried and lost: at 1 MB of work or a few blocks per call, handing a piece to
another thread costs more than it saves (measured on 2 cores: layer norm 1.7 → 2.0 ms, AdamW
9.9 → 11.4 ms per step of the reference model; attention 17 → 13 ms, GELU 6.4 → 4.7 ms).

The count is 1 (off) unless a program asks: :func:`set_num_threads` (``minidist.ops.
set_num_threads(2)``, which also sets OpenBLAS's count, as ``torch.set_num_threads`` sets
MKL's) or the environment variable ``MINIDIST_NUM_THREADS``. Off by default because the
in-process backend already runs its ranks as threads of one process. The count is the
process's, as OpenBLAS's and PyTorch's are: in-process ranks share it and share the pool. A piece's code must do
NumPy work only: no autograd, no device accounting (both belong to the calling thread).
"""
from __future__ import annotations

import os
import threading

from .blas_threads import _library

ENV = "MINIDIST_NUM_THREADS"

_LOCK = threading.Lock()
_STATE = {"threads": None, "pool": None, "workers": 0}
_WORKER = threading.local()       # .inside: this thread is running a piece (no nested splitting)


def _from_env() -> int:
    text = os.environ.get(ENV, "1").strip()
    try:
        n = int(text)
    except ValueError:
        n = 0
    if n < 1:
        raise ValueError(f"{ENV}={text!r}: give a whole number of threads >= 1 (1: ops run on the calling "
                         f"thread only)")
    return n


def num_threads() -> int:
    """Threads an op may split its work over (``set_num_threads`` or ``MINIDIST_NUM_THREADS``; 1)."""
    n = _STATE["threads"]
    if n is None:
        n = _STATE["threads"] = _from_env()
        lib = _library() if ENV in os.environ else None
        if lib is not None:                   # as set_num_threads(n): BLAS runs on n threads too
            lib[1](n)
    return n


def set_num_threads(n: int) -> None:
    """Let ops split their elementwise work over ``n`` threads, and run BLAS on ``n`` threads
    (OpenBLAS's count, when NumPy's OpenBLAS is found). Like ``torch.set_num_threads``."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"set_num_threads: give a whole number of threads >= 1, got {n!r}")
    with _LOCK:
        _STATE["threads"] = n
        pool = _STATE["pool"]
        if pool is not None and _STATE["workers"] != n - 1:
            _STATE["pool"] = None
            pool.shutdown(wait=False)
    lib = _library()
    if lib is not None:
        lib[1](n)


def _pool(workers: int):
    """The shared pool of ``workers`` threads, started on first use (``import minidist`` starts none)."""
    from concurrent.futures import ThreadPoolExecutor

    with _LOCK:
        pool = _STATE["pool"]
        if pool is None:
            pool = _STATE["pool"] = ThreadPoolExecutor(workers, thread_name_prefix="minidist-intra-op",
                                                       initializer=_mark_worker)
            _STATE["workers"] = workers
        return pool


def _mark_worker() -> None:
    _WORKER.inside = True


def _forget_pool() -> None:
    """In a forked child: the parent's pool threads do not exist there; start a new pool on use."""
    _STATE["pool"], _STATE["workers"] = None, 0


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_pool)


def pieces(n: int, parts: int) -> list[tuple[int, int]]:
    """``range(n)`` as ``parts`` contiguous ``(start, stop)`` pieces, the first ones one longer."""
    size, extra = divmod(n, parts)
    out, start = [], 0
    for k in range(parts):
        stop = start + size + (k < extra)
        out.append((start, stop))
        start = stop
    return out


def parallel_for(n: int, body) -> None:
    """``body(start, stop, piece)`` over ``range(n)`` cut into one piece per thread (at most
    ``num_threads()``, at most ``n``): the calling thread runs piece 0, the pool the others;
    returns when all are done and raises the first piece's error. With one thread (or inside a
    piece) it is ``body(0, n, 0)``: the very loop the pieces cut up."""
    parts = min(num_threads(), n)
    if parts <= 1 or getattr(_WORKER, "inside", False):
        body(0, n, 0)
        return
    cuts = pieces(n, parts)
    pool = _pool(num_threads() - 1)
    futures = [pool.submit(body, start, stop, k) for k, (start, stop) in enumerate(cuts) if k > 0]
    error = None
    _WORKER.inside = True             # a piece never splits again, on this thread as on the workers
    try:
        body(*cuts[0], 0)
    except BaseException as exc:      # noqa: BLE001 - re-raised once the other pieces are done
        error = exc
    finally:
        _WORKER.inside = False
    for f in futures:
        try:
            f.result()
        except BaseException as exc:  # noqa: BLE001
            error = error or exc
    if error is not None:
        raise error
