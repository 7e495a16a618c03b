"""The simulated device of one rank: memory, compute clock, links and trace.

Every rank owns exactly one :class:`Device`. Nothing here is a process global: the
in-process backend runs several ranks as threads of one Python process, so the device
that the autograd engine charges FLOPs and activation bytes to is the one *activated in
the current thread* (``with device: ...``), held in a :mod:`contextvars` variable that each
thread sees separately.

Time is simulated and deterministic. Each device has named *streams* (``"compute"``,
``"comm"``, ``"h2d"`` …), each with its own "busy until" time, like CUDA streams: work on
one stream runs after the previous work on that stream, and two streams overlap. The
compute stream advances by ``flops / spec.flops``; the comm stream by ``α + bytes/β``
per message (Hockney's model, as in Thakur, Rabenseifner & Gropp 2005).
"""
from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import json

from .defaults import DEFAULT_DEVICE

from .memory import MemoryTracker, nbytes


@dataclasses.dataclass(frozen=True)
class DeviceSpec:
    """Numbers that define a simulated accelerator and its links.

    ``flops`` is the sustained dense matmul rate (FLOP/s) of the training precision,
    ``alpha`` the per-message latency (s), ``beta`` the link bandwidth (bytes/s) between
    two ranks, ``host_bandwidth`` the host↔device (PCIe) bandwidth used by offload.
    """

    name: str
    memory: float            # bytes of device memory
    flops: float             # FLOP/s
    alpha: float             # s per message
    beta: float              # bytes/s per link
    host_memory: float = 512e9
    host_bandwidth: float = 25e9
    host_flops: float = 1e12

    def message_time(self, nbytes: int) -> float:
        """Hockney cost of one message: α + n/β."""
        return self.alpha + nbytes / self.beta


PRESETS = {
    # A100 SXM: 312 TFLOP/s bf16 dense, NVLink3 ~300 GB/s per direction, ~PCIe4 x16 host link
    "A100-80GB-NVLink": DeviceSpec("A100-80GB-NVLink", 80e9, 312e12, 5e-6, 300e9, 1e12, 25e9, 2e12),
    "A100-40GB-NVLink": DeviceSpec("A100-40GB-NVLink", 40e9, 312e12, 5e-6, 300e9, 1e12, 25e9, 2e12),
    # H100 SXM: ~989 TFLOP/s bf16 dense, NVLink4 ~450 GB/s per direction, PCIe5 host link
    "H100-80GB-NVLink": DeviceSpec("H100-80GB-NVLink", 80e9, 989e12, 4e-6, 450e9, 1e12, 50e9, 3e12),
    # A 16 GB consumer card on PCIe, no NVLink: the "why does DP run out of memory" device.
    "V100-16GB-PCIe": DeviceSpec("V100-16GB-PCIe", 16e9, 112e12, 10e-6, 12e9, 256e9, 12e9, 1e12),
    # A laptop-sized toy: small enough that the demo's tiny GPT hits out-of-memory.
    "laptop": DeviceSpec("laptop", 4e9, 1e12, 20e-6, 10e9, 16e9, 10e9, 2e11),
}


def get_spec(spec: "str | dict | DeviceSpec | None" = None) -> DeviceSpec:
    """A :class:`DeviceSpec` from a preset name, a dict of explicit numbers, or a spec."""
    if spec is None:
        return PRESETS[DEFAULT_DEVICE]
    if isinstance(spec, DeviceSpec):
        return spec
    if isinstance(spec, str):
        if spec not in PRESETS:
            raise ValueError(f"unknown device preset {spec!r}; choose one of {sorted(PRESETS)} "
                             f"or give explicit numbers {{'memory', 'flops', 'alpha', 'beta'}}")
        return PRESETS[spec]
    if isinstance(spec, dict):
        base = PRESETS[spec.get("preset", DEFAULT_DEVICE)]
        fields = {f.name for f in dataclasses.fields(DeviceSpec)}
        unknown = set(spec) - fields - {"preset"}
        if unknown:
            raise ValueError(f"unknown device key(s) {sorted(unknown)}; known: {sorted(fields | {'preset'})}")
        values = {k: v for k, v in spec.items() if k != "preset"}
        for k, v in values.items():
            if k != "name" and not (isinstance(v, (int, float)) and v > 0):
                raise ValueError(f"device.{k} must be a positive number, got {v!r}")
        return dataclasses.replace(base, **{"name": "custom", **values})
    raise TypeError(f"device must be a preset name, a dict or a DeviceSpec, not {type(spec).__name__}")


class Clock:
    """Per-stream simulated time of one rank. Streams are created on first use at t=0."""

    def __init__(self, trace: "Trace"):
        self.streams: dict[str, float] = {"compute": 0.0, "comm": 0.0}
        self.trace = trace

    def now(self, stream: str = "compute") -> float:
        return self.streams.setdefault(stream, 0.0)

    def run(self, stream: str, duration: float, name: str, cat: str = "compute",
            start_after: float = 0.0, args: dict | None = None) -> tuple[float, float]:
        """Occupy ``stream`` for ``duration`` seconds, starting no earlier than ``start_after``.

        Returns (start, end) and records a trace event.
        """
        start = max(self.now(stream), start_after)
        end = start + duration
        self.streams[stream] = end
        self.trace.complete(name, cat, stream, start, end, args)
        return start, end

    def wait(self, stream: str, until: float) -> float:
        """Make ``stream`` wait until time ``until`` (an event/stream synchronisation)."""
        t = max(self.now(stream), until)
        self.streams[stream] = t
        return t

    # -- a message's times (Hockney's α + n/β as ``duration``): one call per side -----------
    def send(self, stream: str, duration: float) -> tuple[float, float]:
        """A send on ``stream``: it leaves when the stream is free and keeps the outgoing link
        busy until it arrives. Returns ``(start, arrival)``; the stream is busy until arrival
        (the same as ``now`` then ``wait(stream, start + duration)``, in one call: every
        message makes this call, so it is kept to one dict read and one write)."""
        streams = self.streams
        start = streams.setdefault(stream, 0.0)
        end = start + duration         # >= start: the stream waits until it
        streams[stream] = end
        return start, end

    def receive(self, stream: str, inport: str, arrival: float, duration: float) -> float:
        """A receive on ``stream`` of a message that arrives at ``arrival``: it completes once the
        data is there and the incoming link ``inport`` has carried it after the message before
        (so incast to one rank serialises). Returns the completion time, which both streams
        wait for."""
        streams = self.streams
        free = streams.setdefault(inport, 0.0) + duration    # max(...) written out: a call less, same value
        end = free if free > arrival else arrival             # >= the inport's time
        streams[inport] = end
        busy = streams.setdefault(stream, 0.0)
        end = end if end > busy else busy
        streams[stream] = end
        return end

    def sync(self) -> float:
        """Synchronise all streams to the latest one (a device-wide barrier)."""
        t = max(self.streams.values())
        for s in self.streams:
            self.streams[s] = t
        return t

    @property
    def time(self) -> float:
        return max(self.streams.values())


class Trace:
    """Chrome / Perfetto trace events of one rank (``ph: "X"`` complete events)."""

    def __init__(self, rank: int = 0, enabled: bool = True):
        self.rank = rank
        self.enabled = enabled
        self.events: list[dict] = []

    def complete(self, name, cat, stream, start, end, args=None):
        if self.enabled:
            ev = {"name": name, "cat": cat, "ph": "X", "pid": self.rank, "tid": stream,
                  "ts": start * 1e6, "dur": (end - start) * 1e6}
            if args:
                ev["args"] = args
            self.events.append(ev)


def _as_trace(t, rank: int) -> Trace:
    if isinstance(t, Device):
        return t.trace
    if isinstance(t, Trace):
        return t
    tr = Trace(rank)                       # a list of events gathered from rank ``rank``
    tr.events = list(t)
    return tr


def export_chrome_trace(traces, path) -> dict:
    """Write one or more ranks' traces as a Chrome trace-event JSON file.

    Open it in https://ui.perfetto.dev or chrome://tracing: one process per rank, one
    thread (track) per stream. Simulated seconds become microseconds. ``traces``: Devices,
    Traces, or — as :func:`minidist.distributed.gather_object` delivers them on rank 0 — one list
    of events per rank, in rank order.
    """
    traces = [_as_trace(t, i) for i, t in enumerate(traces if isinstance(traces, (list, tuple)) else [traces])]
    events = []
    for tr in traces:
        events.append({"name": "process_name", "ph": "M", "pid": tr.rank, "args": {"name": f"rank {tr.rank}"}})
        events.extend(tr.events)
    doc = {"traceEvents": events, "displayTimeUnit": "ms"}
    with open(path, "w") as f:
        json.dump(doc, f)
    return doc


_current: contextvars.ContextVar["Device | None"] = contextvars.ContextVar("minidist_device", default=None)


def current_device() -> "Device | None":
    """The device activated in this thread (``with device:``), or None."""
    return _current.get()


@contextlib.contextmanager
def off_device():
    """No device active inside the block, whatever this thread has activated: nothing the ops
    do there is charged (FLOPs, clock, memory, trace). Evaluation runs so, on one rank as on
    many (an in-process or MPI rank keeps its device active for its whole run)."""
    token = _current.set(None)
    try:
        yield
    finally:
        _current.reset(token)


class Device:
    """One rank's simulated accelerator: memory pool, host pool, streams, FLOPs, trace.

    Use it as a context manager to make the autograd engine charge its FLOPs and
    saved activations to it::

        dev = Device("A100-80GB-NVLink", rank=0)
        with dev:
            loss.backward()
        dev.memory.peak, dev.flops, dev.clock.time

    ``accounting=False`` turns the bookkeeping off — the memory trackers, the FLOP counters,
    the compute clock and the trace — for a run that wants only the numbers NumPy computes
    (and its speed): the values, losses and gradients are the same bit for bit, while
    ``flops``, ``memory.peak``, ``clock.time`` stay 0 and nothing is out of memory.
    """

    def __init__(self, spec: "str | dict | DeviceSpec | None" = None, rank: int = 0,
                 trace: bool = True, memory_capacity: float | None = None, accounting: bool = True):
        self.spec = get_spec(spec)
        self.rank = rank
        self.accounting = accounting
        self.trace = Trace(rank, enabled=trace and accounting)
        self.clock = Clock(self.trace)
        cap = self.spec.memory if memory_capacity is None else memory_capacity
        self.memory = MemoryTracker(cap, f"rank {rank} ({self.spec.name})", lambda: self.clock.now("compute"),
                                    enabled=accounting)
        self.host = MemoryTracker(self.spec.host_memory, f"rank {rank} host", lambda: self.clock.now("compute"),
                                  enabled=accounting)
        self.label_prefix = ""    # "recompute " while activation checkpointing re-runs a forward
        self.flops = 0            # every counted FLOP, all ops
        self.matmul_flops = 0     # the part done by matmuls (what 6·N·D counts)
        self.flops_by_op: dict[str, int] = {}
        # autograd's saved-for-backward registry: id(root array) -> [refcount, handle, array]
        self._saved: dict[int, list] = {}
        # ids of parameter arrays placed here: already counted under "parameters", so a
        # view of one saved for backward (the tied LM head's wteᵀ) is not an activation
        self.param_arrays: set[int] = set()
        self._tokens: list = []

    @contextlib.contextmanager
    def rolled_back(self, log=None):
        """What runs inside leaves no record here: the clock's streams, the trace, the FLOP
        counts, the memory peaks and timelines (and ``log``, a rank's message log, when given)
        are put back as they were. Evaluation runs so (``Trainer.evaluate``): its collectives —
        ZeRO-3's gathers, the pipeline's whole model, tensor parallelism's forward — go through
        the rank's communicators, which share this device and log. Everything allocated inside
        must be freed inside."""
        streams, events = dict(self.clock.streams), len(self.trace.events)
        counts = (self.flops, self.matmul_flops, dict(self.flops_by_op))
        pools = [(pool, pool._records()) for pool in (self.memory, self.host)]
        mark = log.mark() if log is not None else None
        try:
            yield
        finally:
            self.clock.streams.clear()
            self.clock.streams.update(streams)
            del self.trace.events[events:]
            self.flops, self.matmul_flops, self.flops_by_op = counts
            for pool, records in pools:
                pool._put_back(records)
            if log is not None:
                log.rollback(mark)

    # -- context --------------------------------------------------------------------------
    def __enter__(self) -> "Device":
        self._tokens.append(_current.set(self))
        return self

    def __exit__(self, *exc) -> None:
        _current.reset(self._tokens.pop())

    # -- compute --------------------------------------------------------------------------
    def compute(self, name: str, flops: int, matmul: bool = False, stream: str = "compute",
                flops_per_s: float | None = None) -> tuple[float, float]:
        """Charge ``flops`` of op ``name`` to this device and advance its compute stream."""
        if not self.accounting:
            t = self.clock.now(stream)
            return t, t
        name = self.label_prefix + name
        self.flops += flops
        if matmul:
            self.matmul_flops += flops
        self.flops_by_op[name] = self.flops_by_op.get(name, 0) + flops
        return self.clock.run(stream, flops / (flops_per_s or self.spec.flops), name, "compute")

    @contextlib.contextmanager
    def phase(self, name: str, **args):
        """One span ``name`` on the trace's ``phase`` track around the work inside the block
        (generation's ``prefill`` and ``decode``, :mod:`minidist.inference`). Every stream is
        synchronised on entry and exit — the host reads each step's result before the next
        one starts — so the span holds exactly the block's compute and messages. Its args:
        ``args``, plus what the caller adds to the yielded dict, plus the FLOPs counted inside
        and the bytes held per memory category at the end."""
        t0, flops, matmul = self.clock.sync(), self.flops, self.matmul_flops
        extra = dict(args)
        yield extra
        t1 = self.clock.sync()
        self.trace.complete(name, "phase", "phase", t0, t1,
                            {**extra, "flops": self.flops - flops, "matmul_flops": self.matmul_flops - matmul,
                             "memory": self.memory.resident(), "t_start": t0, "t_end": t1})

    def phases(self, name: str | None = None) -> list[dict]:
        """The spans :meth:`phase` recorded (optionally only those called ``name``), in order:
        ``{"name", "t_start", "t_end", "flops", "matmul_flops", "memory", …}``."""
        return [{"name": e["name"], **e["args"]} for e in self.trace.events
                if e["cat"] == "phase" and (name is None or e["name"] == name)]

    # -- activations saved by autograd ----------------------------------------------------
    def save_for_backward(self, arrays, dtype: str | None = None) -> list[int]:
        """Account arrays kept alive for backward under "activations", each buffer once.

        ``dtype`` ("fp16", "bf16"…): the emulated format float arrays are held in under
        autocast, charged at its size (2 bytes) instead of float32's 4.
        """
        if not self.accounting:
            return []
        keys = []
        for a in arrays:
            root = a
            while root.base is not None and isinstance(root.base, type(a)):
                root = root.base
            key = id(root)
            if key in self.param_arrays:
                continue
            entry = self._saved.get(key)
            if entry is None:
                size = nbytes(root, dtype) if dtype and a.dtype.kind == "f" else root.nbytes
                handle = self.memory.alloc(size, "activations")
                self._saved[key] = [1, handle, root]
            else:
                entry[0] += 1
            keys.append(key)
        return keys

    def release_saved(self, keys) -> None:
        for key in keys:
            entry = self._saved[key]
            entry[0] -= 1
            if entry[0] == 0:
                self.memory.free(entry[1])
                del self._saved[key]

    def summary(self) -> dict:
        return {"rank": self.rank, "device": self.spec.name, "flops": self.flops,
                "sim_time": self.clock.time, "memory": self.memory.summary(),
                "host_memory": self.host.summary()}
