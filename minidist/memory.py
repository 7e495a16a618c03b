"""Per-rank memory accounting: every byte a rank holds, by category, over time.

A real GPU's memory during training splits into four big components (the source notes'
参数 / 梯度 / 中间结果 / 优化器 — parameters, gradients, intermediate results, optimizer
states) plus communication buffers and odds and ends; during generation the keys and values
of past tokens (``kv_cache``, :mod:`minidist.inference`) are a fifth. A :class:`MemoryTracker` is the
simulated allocator of one rank's device (or its host pool, for offload): callers
``alloc`` bytes under a category and ``free`` the handle later. The tracker keeps

* the resident bytes per category,
* the peak and the breakdown at the moment of the peak,
* a timeline of every change, stamped with the rank's simulated time,

and raises :class:`OutOfMemoryError` when an allocation would exceed the capacity, saying
what was being allocated and what is held.

Sizes are *emulated* sizes: an fp16 tensor held in a float32 NumPy array counts 2 bytes
per element (see :func:`nbytes`).
"""
from __future__ import annotations

import numpy as np

CATEGORIES = ("parameters", "gradients", "optimizer_states", "activations", "kv_cache", "buffers", "other")

# Bytes per element of every dtype name minidist knows, emulated formats included.
DTYPE_BYTES = {
    "fp64": 8, "float64": 8,
    "fp32": 4, "float32": 4,
    "fp16": 2, "float16": 2, "bf16": 2,
    "fp8_e4m3": 1, "fp8_e5m2": 1,
    "int64": 8, "int32": 4, "int8": 1, "uint8": 1, "bool": 1,
}


def nbytes(array, dtype: str | None = None) -> int:
    """Emulated size in bytes of ``array``; ``dtype`` overrides the NumPy itemsize."""
    n = int(np.size(array))
    if dtype is None:
        return n * np.asarray(array).itemsize
    try:
        return n * DTYPE_BYTES[dtype]
    except KeyError:
        raise ValueError(f"unknown dtype {dtype!r}; known: {sorted(DTYPE_BYTES)}") from None


def format_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.2f} {unit}"
        n /= 1024
    return f"{n} B"  # pragma: no cover


class OutOfMemoryError(MemoryError):
    """The simulated device ran out of memory (the CUDA "out of memory" of minidist)."""


class MemoryTracker:
    """Simulated allocator for one memory pool of one rank.

    ``clock`` is a callable returning the rank's current simulated time (seconds); it
    stamps the timeline. ``capacity`` is in bytes (``None`` = unlimited). ``enabled=False``
    (a device with its accounting off): :meth:`alloc` records nothing and returns ``None``,
    which :meth:`free` ignores, so every count stays 0 and nothing is ever out of memory.
    """

    def __init__(self, capacity: float | None = None, name: str = "device", clock=None, enabled: bool = True):
        self.enabled = enabled
        self.capacity = capacity
        self.name = name
        self._clock = clock or (lambda: 0.0)
        self.current = dict.fromkeys(CATEGORIES, 0)
        self.total = 0
        self.peak = 0
        self.peak_by_category = dict(self.current)
        self.max_by_category = dict(self.current)      # each category's own maximum
        self._live: dict[int, tuple[str, int, str]] = {}
        self._next = 1
        # timeline rows: (time_s, category, delta_bytes, total_after)
        self.timeline: list[tuple[float, str, int, int]] = []

    # -- a block that leaves no record ----------------------------------------------------
    def _records(self) -> tuple:
        return (self.peak, dict(self.peak_by_category), dict(self.max_by_category), len(self.timeline))

    def _put_back(self, records: tuple) -> None:
        """The peaks and the timeline as ``_records`` took them; what was allocated in between
        has been freed (the current bytes are those of then)."""
        self.peak, self.peak_by_category, self.max_by_category, n = records
        del self.timeline[n:]

    # -- allocation -----------------------------------------------------------------------
    def alloc(self, nbytes: int, category: str, name: str = "") -> int | None:
        """Account ``nbytes`` under ``category``; returns a handle for :meth:`free`."""
        if category not in self.current:
            raise ValueError(f"unknown memory category {category!r}; use one of {CATEGORIES}")
        if not self.enabled:
            return None
        nbytes = int(nbytes)
        if self.capacity is not None and self.total + nbytes > self.capacity:
            held = ", ".join(f"{c}={format_bytes(b)}" for c, b in self.current.items() if b)
            raise OutOfMemoryError(
                f"simulated out of memory on {self.name}: tried to allocate "
                f"{format_bytes(nbytes)} for {category}{' (' + name + ')' if name else ''} "
                f"with {format_bytes(self.total)} of {format_bytes(self.capacity)} in use "
                f"[{held or 'nothing'}]. Use a larger device preset, a higher ZeRO stage, "
                f"offload, activation checkpointing or a smaller micro-batch."
            )
        handle = self._next
        self._next += 1
        self._live[handle] = (category, nbytes, name)
        self._change(category, nbytes)
        return handle

    def free(self, handle: int | None) -> None:
        """Release an allocation; freeing ``None`` is a no-op (convenient for optional state)."""
        if handle is None:
            return
        category, nbytes, _ = self._live.pop(handle)
        self._change(category, -nbytes)

    def _change(self, category: str, delta: int) -> None:
        self.current[category] += delta
        if self.current[category] > self.max_by_category[category]:
            self.max_by_category[category] = self.current[category]
        self.total += delta
        self.timeline.append((self._clock(), category, delta, self.total))
        if self.total > self.peak:
            self.peak = self.total
            self.peak_by_category = dict(self.current)

    # -- inspection -----------------------------------------------------------------------
    def resident(self) -> dict[str, int]:
        return dict(self.current)

    def live(self, category: str | None = None) -> list[tuple[str, int, str]]:
        """Live allocations as (category, bytes, name), optionally of one category."""
        return [a for a in self._live.values() if category is None or a[0] == category]

    def reset_peak(self) -> None:
        self.peak = self.total
        self.peak_by_category = dict(self.current)

    def curves(self) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """Timeline as arrays: event index → bytes per category (for stacked plots)."""
        n = len(self.timeline)
        per = {c: np.zeros(n + 1, dtype=np.int64) for c in CATEGORIES}
        running = dict.fromkeys(CATEGORIES, 0)
        times = np.zeros(n + 1)
        for i, (t, cat, delta, _) in enumerate(self.timeline, start=1):
            running[cat] += delta
            times[i] = t
            for c in CATEGORIES:
                per[c][i] = running[c]
        return times, per

    def summary(self) -> dict:
        return {
            "peak_bytes": self.peak,
            "peak_by_category": dict(self.peak_by_category),
            "resident_by_category": self.resident(),
            "max_by_category": dict(self.max_by_category),
        }
