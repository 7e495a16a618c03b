"""Figures. Only this package imports matplotlib (with the Agg backend).

Every figure is drawn by one function of a chapter's module (``memory``, ``collectives``,
``zero``, ``precision``, ``tensor``, ``pipeline``, ``checkpointing``, ``distill``, ``grid``) and written by :func:`save`.

Laying a figure out and rendering it to PNG costs ten times what building it does (0.8 s
against 0.08 s for six panels of curves), and the in-process tour computes on one core (its
ranks are threads under one interpreter lock; under mpirun, the other ranks mostly wait while
rank 0 draws). Inside :func:`background` (the tour, ``python -m minidist.demo``), :func:`save`
therefore hands each built figure (pickled, as matplotlib supports) to one worker process
that lays it out and writes it on another core while the tour goes on;
:func:`wait_for_figures` waits for the last one and raises the first failure, naming its
file. The files are the same as when written in place. A figure that cannot be pickled is
written in place.
"""
from __future__ import annotations

import contextlib
import multiprocessing
import pickle
import threading
import time
from concurrent.futures import ProcessPoolExecutor

import matplotlib

matplotlib.use("Agg")                      # files only: no display on a cluster or in CI

import matplotlib.pyplot as plt  # noqa: E402

DPI = 110


def save(fig, path, rect=None, dpi: int = DPI, tight: bool = True):
    """Lay out ``fig`` (``tight``: matplotlib's tight layout, inside ``rect`` when a suptitle or
    a footnote needs room), write it to ``path`` and free it; returns ``path``. Inside
    :func:`background`, the layout and the writing happen in the worker process."""
    pool = _pool()
    if pool is not None:
        try:
            data = pickle.dumps(fig)
        except Exception:        # noqa: BLE001 - an unpicklable artist: written in place below
            data = None
        if data is not None:
            plt.close(fig)
            with _BACKGROUND["lock"]:
                _BACKGROUND["pending"].append((str(path), pool.submit(_write_pickled, data, str(path), rect, dpi, tight)))
            return path
    _write(fig, path, rect, dpi, tight)
    return path


def _write(fig, path, rect, dpi, tight):
    if tight:
        fig.tight_layout(**({"rect": rect} if rect is not None else {}))
    fig.savefig(path, dpi=dpi)
    plt.close(fig)


def _write_pickled(data: bytes, path: str, rect, dpi, tight) -> None:
    """In the worker process: the figure :func:`save` pickled, laid out and written."""
    _write(pickle.loads(data), path, rect, dpi, tight)


# "on": inside background(); "pool": its worker, started by the first figure (under mpirun
# only the ranks that draw start one)
_BACKGROUND = {"on": False, "pool": None, "pending": [], "lock": threading.Lock()}


def _pool():
    if not _BACKGROUND["on"]:
        return None
    with _BACKGROUND["lock"]:
        if _BACKGROUND["pool"] is None:
            _BACKGROUND["pool"] = ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn"))
        return _BACKGROUND["pool"]


@contextlib.contextmanager
def background():
    """Inside, :func:`save` writes figures in one worker process (see the module docstring);
    on the way out, every figure is waited for."""
    _BACKGROUND["on"] = True
    try:
        yield
        wait_for_figures()
    finally:
        _BACKGROUND["on"] = False
        pool, _BACKGROUND["pool"] = _BACKGROUND["pool"], None
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)
        _BACKGROUND["pending"].clear()


def wait_for_figures() -> float | None:
    """Wait until every figure handed to the worker is written; seconds waited. Raises the
    first failure, naming the file. Without :func:`background`, returns None at once."""
    if not _BACKGROUND["on"]:
        return None
    t0 = time.perf_counter()
    with _BACKGROUND["lock"]:
        pending, _BACKGROUND["pending"] = _BACKGROUND["pending"], []
    for path, future in pending:
        try:
            future.result()
        except Exception as exc:
            raise RuntimeError(f"figure {path} could not be written: {type(exc).__name__}: {exc}") from exc
    return time.perf_counter() - t0
