"""Keep glibc from returning NumPy's large temporaries to the OS after every op.

A training step allocates and frees many multi-megabyte temporaries. By default glibc
serves each one with a fresh ``mmap`` and gives it back on free, so every op pays page
faults for memory it just released. Raising the mmap and trim thresholds makes freed
blocks reusable, as PyTorch's CPU caching allocator does. No effect off glibc.

``mallopt`` sets the allocator of the whole process, so only the commands that own their
process call :func:`tune_malloc` (``python -m minidist.train``, ``python -m minidist.demo``,
the benchmarks), never ``import minidist``: a program or notebook that imports minidist keeps
its own allocator settings. Calling it twice is harmless (it sets the same three values).
"""
import ctypes
import sys

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
