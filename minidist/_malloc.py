"""Process settings for the commands that own their process: glibc's malloc and Python's GC.

**malloc.** Keep glibc from returning NumPy's large temporaries to the OS after every op.

A training step allocates and frees many multi-megabyte temporaries. By default glibc
serves each one with a fresh ``mmap`` and gives it back on free, so every op pays page
faults for memory it just released. Raising the mmap and trim thresholds makes freed
blocks reusable, as PyTorch's CPU caching allocator does. No effect off glibc.

**GC.** Python's cyclic garbage collector runs a young collection every 700 allocations
and, every 100 of those, a full one that walks every object alive. A simulated world keeps
many (every rank's model, optimizer and message log: 36,288 messages per step at 64 ZeRO-3
ranks), and a training step allocates a great many short-lived ones (tensors, graph nodes,
message headers), so full walks over a large heap took a quarter of a 64-rank step.
:func:`tune_gc` raises the thresholds to (100000, 50, 100): the same collections, about 140
times rarer. Reference counting still frees every object without a cycle at once; only
cyclic garbage waits longer. ``benchmarks/bench_scaling.py``: a 64-rank ZeRO-3 step of a
tiny GPT, 1.9–2.0 s with the defaults, 1.5 s with these.

``mallopt`` and ``gc.set_threshold`` set the whole process, so only the commands that own
their process call :func:`tune_process` (``python -m minidist.train``, ``python -m
minidist.demo``, the benchmarks), never ``import minidist``: a program or notebook that
imports minidist keeps its own settings. Calling it twice is harmless (it sets the same values).
"""
import ctypes
import gc
import sys

GC_THRESHOLDS = (100_000, 50, 100)

M_TRIM_THRESHOLD, M_TOP_PAD, M_MMAP_THRESHOLD = -1, -2, -3


def tune_malloc() -> bool:
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        ok = libc.mallopt(M_MMAP_THRESHOLD, 256 * 2**20)
        ok &= libc.mallopt(M_TRIM_THRESHOLD, 1024 * 2**20)
        ok &= libc.mallopt(M_TOP_PAD, 64 * 2**20)
        return bool(ok)
    except (OSError, AttributeError):
        return False


def tune_gc() -> None:
    """Python's GC thresholds for a long training or simulation (see the module docstring)."""
    gc.set_threshold(*GC_THRESHOLDS)


def tune_process() -> bool:
    """:func:`tune_malloc` and :func:`tune_gc`; returns whether malloc could be tuned."""
    tune_gc()
    return tune_malloc()
