"""The MPI backend: one rank per process, over mpi4py (imported only by this module).

Launch a program with ``mpirun -n 4 python prog.py``; inside, ``dist.init()`` (or
``dist.run_main(fn)``) returns an :class:`MPIComm` over ``MPI.COMM_WORLD``. Collectives
are *not* MPI's: they are the same Python algorithms as in-process, on top of MPI's
point-to-point, so the results and the message log are the same on both backends.

How a message travels: every payload carries a 16-number **header** (simulated start and
arrival time, wire bytes, collective/algorithm/step, dtype and shape, the collective's
input) in **one MPI message** with it: the header's bytes, then the payload's (a *frame*).
A payload over ``INLINE_BYTES`` goes as the header frame alone followed by the raw payload on
a duplicate communicator, so the large array is sent in place, never copied into a frame
(MPI moves it by rendezvous anyway, where one more small message costs nothing). The
receive for the frame is posted when ``irecv`` is called, with room for the largest frame
(``HEADER_BYTES + INLINE_BYTES``: none is ever truncated); once it is in, the header is read
and checked, and only then is the large payload received — straight into ``out=`` when
given. Both sides know which way a message goes from its size, so no flag travels. A posted
receive moves on through these stages whenever its rank waits for anything
(:class:`_Incoming`), so a send completes once its receive is posted, as MPI promises, even
if the receiver first waits for its own send. A frame that MPI sends at once (eagerly: up to
about 8 KB with the ``mpich`` wheel on one machine) completes when it is posted, and ``isend``
returns the completed request. Every message costs Python, not MPI: the header is packed
with :mod:`struct`, the payload copied by ``memoryview``, and nothing is asked of MPI that the
header already says (its length), so a send and its wait take about 8 µs and a receive about
9 µs on two ranks (``benchmarks/bench_allreduce.py`` prints the cost per message).

Waiting never busy-waits for long: a wait polls for ``SPIN_S`` (a message from a rank on
another core arrives within it) when every rank on the machine has a core of its own, and
not at all when ranks share cores (the rank it waits on may be the one it keeps off its
core), then gives the core away between polls (``sched_yield``:
a rank sharing this core runs at once, and this one is back as soon as the core is free)
until ``YIELD_S``, then sleeps between polls, from ``MIN_SLEEP_S`` doubling up to
``MAX_SLEEP_S``, so ranks that share a core (4 ranks on 2 cores) hand it to each other
instead of burning it (MPICH's own waits spin, yielding once every 1000 polls). Yielding
before sleeping halved the cost of a small message on 4 ranks on 2 cores: ping-pong
overhead 94 → 48 µs, a 64 KB ring all-reduce 5.6 → 2.1 ms (``benchmarks/bench_allreduce.py``):
a sleep, however short, lets a message wait until the sleeper's timer fires.
Every wait has a deadline (``timeout``): a deadlock becomes a :class:`CommTimeoutError`
naming the ranks, and ``run_main`` aborts the whole job.
"""
from __future__ import annotations

import ctypes
import math
import os
import struct
import sys
import threading
import time
import traceback
import zlib

import numpy as np
from mpi4py import MPI

from ..device import Device
from .collectives import ALGORITHMS
from .comm import CTRL_TAG, Communicator, Header, _tuple_new
from .errors import CommError, CommTimeoutError
from .log import MessageLog
from . import watchdog

ABORT_GRACE_S = 0.25      # see abort_job
HEADER_LEN = 16          # t_start, arrival, nbytes, op, algorithm (root, op above), step, dtype, ndim, shape[0..4],
MAX_NDIM = 5             # and the collective's input: shape code, element count, dtype
HEADER_BYTES = 8 * HEADER_LEN   # 128: the payload that follows it in a frame stays 16-byte aligned
INLINE_BYTES = 32 << 10  # payloads up to this ride in the header's frame (one copy each side, ~µs)
SPIN_S = 20e-6           # a wait polls this long before it yields between polls,
YIELD_S = 1e-3           # and yields the core between polls this long before it sleeps between polls
MIN_SLEEP_S, MAX_SLEEP_S = 2e-6, 200e-6
CLOCK_EVERY = 16         # polls between two reads of the clock while yielding (see MPIComm._poll)
_yield = getattr(os, "sched_yield", lambda: time.sleep(0))   # off Unix: the shortest sleep
_TIMER_SLACK_NS = 1000   # Linux rounds a sleep up by the thread's timer slack (50 µs by default)
# the two simulated times as float64, then 14 integers as int64 (no float round trip to undo)
_HEADER = struct.Struct(f"<2d{HEADER_LEN - 2}q")
_NO_DIMS = (0,) * MAX_NDIM
_DTYPES = [np.dtype(t) for t in ("float64", "float32", "float16", "int64", "int32", "int16", "int8",
                                 "uint64", "uint32", "uint16", "uint8", "bool", "complex128", "complex64")]
# dtype (and its name) -> header code, built once: a per-message str(dtype) costs more than the message
_DTYPE_CODE = {d: i for i, d in enumerate(_DTYPES)}
_DTYPE_NAMES = [str(d) for d in _DTYPES]
_DTYPE_NAME_CODE = {name: i for i, name in enumerate(_DTYPE_NAMES)}


def _code(name: str) -> int:
    """A collective/algorithm name as a number for its int64 header slot (the name's CRC-32)."""
    return zlib.crc32(name.encode())


def _known_names() -> dict[int, str]:
    names = {"send", "recv", "p2p"} | set(ALGORITHMS)
    for table in ALGORITHMS.values():
        names |= set(table)
    return {_code(n): n for n in names}


def _short_sleeps() -> None:
    """Let this thread's sleeps end on time: Linux rounds each up by the thread's timer slack,
    50 µs by default, longer than a small message takes (prctl PR_SET_TIMERSLACK)."""
    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL(None).prctl(29, _TIMER_SLACK_NS, 0, 0, 0)
        except (OSError, AttributeError):
            pass


def _bytes(a: np.ndarray):
    """The array's memory as an MPI byte buffer, without a copy."""
    return [a.reshape(-1).view(np.uint8), MPI.BYTE]


class _Incoming:
    """A posted receive on its way: its frame received (posted at once), its header read and
    checked, then (payload over ``INLINE_BYTES``) its payload received — into
    ``out`` when the header matches it, else into a scratch buffer, so that a refused message
    is still taken off the wire. :func:`_advance_posted` moves every posted receive on while
    its rank waits for something else: MPI's rule that a send completes once its receive is
    *posted* holds, not only once it is waited for. The frame's length is not asked of MPI:
    the header's dtype and shape give it."""

    __slots__ = ("comm", "source", "tag", "out", "on_header", "error", "frame", "reqs", "stage",
                 "header", "dtype", "shape", "nbytes", "inline", "target")

    def __init__(self, comm, source, tag, out, on_header):
        self.comm, self.source, self.tag, self.out, self.on_header = comm, source, tag, out, on_header
        self.error = None
        # posted now, into room for the largest frame: no frame is ever truncated
        self.frame = np.empty(HEADER_BYTES + INLINE_BYTES, np.uint8)
        self.reqs, self.stage = [comm._mpi.Irecv([self.frame, MPI.BYTE], source, tag)], 1

    def advance(self) -> bool:
        """One non-blocking step; True once the whole message is here."""
        if self.stage == 1:
            if not self.reqs[0].Test():
                return False
            self._read_header()
        if self.stage == 2:
            if not MPI.Request.Testall(self.reqs):
                return False
            self.stage = 3
        return self.stage == 3

    def _read_header(self):
        c, out = self.comm, self.out
        self.header, dtype, shape = c._unpack(self.frame)
        size = math.prod(shape)
        self.dtype, self.shape, self.nbytes = dtype, shape, size * dtype.itemsize
        try:
            self.on_header(self.header)
            if out is not None and (out.dtype != dtype or out.size != size):
                raise ValueError(f"recv into a {out.dtype} buffer of {out.size} elements but rank "
                                 f"{c.world_rank(self.source)} sent {dtype} of shape {shape}")
        except Exception as exc:    # noqa: BLE001 - raised by result(), in the receiving call
            self.error = exc
        self.inline = self.nbytes <= INLINE_BYTES     # the payload came in the frame
        if self.inline:
            self.stage = 3
            return
        if self.error is None and out is not None and out.flags.c_contiguous:
            self.target = out
        else:
            self.target = np.empty(self.nbytes, np.uint8)
        self.reqs, self.stage = [c._bulk.Irecv(_bytes(self.target), self.source, self.tag)], 2

    def result(self):
        """``(array, header)``, or the refusal the header check raised."""
        if self.error is not None:
            raise self.error
        out, nbytes = self.out, self.nbytes
        if self.inline:     # a copy: a view would keep the whole frame's room alive
            body = self.frame[HEADER_BYTES:HEADER_BYTES + nbytes]
            if out is None:
                return body.view(self.dtype).reshape(self.shape).copy(), self.header
            if nbytes and out.flags.c_contiguous:       # the header matched: out holds nbytes
                memoryview(out).cast("B")[:] = memoryview(body)
                return out, self.header
            payload = body.view(self.dtype).reshape(self.shape)
        elif self.target is out:
            return out, self.header
        else:
            payload = self.target.view(self.dtype).reshape(self.shape)
        if out is None:
            return payload, self.header
        out[...] = payload.reshape(out.shape)
        return out, self.header


_POSTED: list[_Incoming] = []       # this process's posted receives, in posting order
_SPIN = {"s": SPIN_S}               # this process's spin before it yields (``_spin_time``)


def _spin_time(world) -> float:
    """``SPIN_S`` when every rank on this machine can have a core of its own, else 0: a rank
    that shares its core (4 ranks on 2 cores) yields at once, for the rank it waits on may be
    the one it would keep off the core (a 64 KB ring all-reduce: 1.7 → 1.5 ms)."""
    local = world.Split_type(MPI.COMM_TYPE_SHARED)
    ranks = local.Get_size()
    local.Free()
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:                     # not Linux
        cores = os.cpu_count() or 1
    return SPIN_S if ranks <= cores else 0.0


def _advance_posted() -> None:
    """Move every posted receive on, in posting order. MPI matches the frames to them in that
    order; their payloads must be asked for in it too, so a receive whose frame is not in
    yet holds back the later ones on its channel."""
    waiting = set()
    for incoming in list(_POSTED):
        line = (id(incoming.comm), incoming.source, incoming.tag)
        if incoming.stage < 3 and line not in waiting:
            incoming.advance()
            if incoming.stage == 1:
                waiting.add(line)


# Errors whose message says everything (bad input, divergence, simulated OOM, a peer's
# failure): printed without a traceback. Anything else is a bug: its traceback is shown.
PLAIN_ERRORS = (ValueError, ArithmeticError, MemoryError, CommError, KeyboardInterrupt)


def abort_job(comm, exc: BaseException) -> None:
    """Print this rank's failure (its number and message) to stderr and abort every rank:
    ``MPI_Abort`` makes mpirun kill the job now instead of letting the others time out."""
    head = f"[minidist] rank {comm.rank} of {comm.size} failed: {type(exc).__name__}: {exc}\n"
    if not isinstance(exc, PLAIN_ERRORS):
        head += "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    watchdog.claim()                 # this job's failure is reported here: the watchers stay quiet
    sys.stderr.write(head)
    sys.stderr.flush()
    watchdog.say_goodbye(aborting=True)
    # MPI_Abort makes MPICH's proxy kill the job at once, and it may drop what it has not yet
    # forwarded from this rank's stderr: give it a moment to pass the message on first
    time.sleep(ABORT_GRACE_S)
    MPI.COMM_WORLD.Abort(1)
    os._exit(1)         # MPICH's Abort may return before mpirun kills us: never run on after it


def abort_on_uncaught(comm) -> None:
    """Route exceptions nobody catches — in the main thread or any other — to :func:`abort_job`
    (what ``python -m mpi4py prog.py`` does, and what ``dist.init()`` programs need)."""
    sys.excepthook = lambda tp, exc, tb: abort_job(comm, exc)
    threading.excepthook = lambda args: abort_job(comm, args.exc_value)


class MPIComm(Communicator):
    """A communicator over an ``mpi4py`` communicator."""

    backend = "mpi"

    def __init__(self, mpi_comm, device, log, world_ranks, timeout=60.0, debug=False):
        super().__init__(mpi_comm.Get_rank(), mpi_comm.Get_size(), device, log, world_ranks, timeout, debug)
        self._mpi = mpi_comm
        self._bulk = mpi_comm.Dup()     # payloads over INLINE_BYTES: never matched by a frame
        self._ctrl = mpi_comm.Dup()     # debug signatures and split: never logged
        self._names = _known_names()     # code -> name; collectives defined elsewhere join on use
        self._codes = {name: code for code, name in self._names.items()}

    @classmethod
    def world(cls, device=None, timeout: float = 60.0, debug: bool = False) -> MPIComm:
        _short_sleeps()
        w = MPI.COMM_WORLD
        _SPIN["s"] = _spin_time(w)
        return cls(w.Dup(), Device(device, rank=w.Get_rank()), MessageLog(), range(w.Get_size()), timeout, debug)

    # -- headers ------------------------------------------------------------------------
    def _pack(self, header: Header, x: np.ndarray, frame) -> None:
        """Write ``header`` and ``x``'s dtype and shape as the 16 numbers at the start of ``frame``."""
        code, ndim = _DTYPE_CODE.get(x.dtype), x.ndim
        if code is None or ndim > MAX_NDIM:
            raise TypeError(f"the MPI backend sends arrays of <= {MAX_NDIM} dims of {[str(d) for d in _DTYPES]}, "
                            f"got {x.dtype} of shape {x.shape}")
        codes = self._codes
        op, algorithm = codes.get(header.op), codes.get(header.algorithm)
        _HEADER.pack_into(frame, 0, header.t_start, header.arrival, header.nbytes,
                          self._learn(header.op) if op is None else op,
                          (self._learn(header.algorithm) if algorithm is None else algorithm) | header.variant << 32,
                          header.step, code, ndim, *x.shape, *_NO_DIMS[ndim:], header.shape_code, header.count,
                          _DTYPE_NAME_CODE.get(header.dtype, -1))

    def _learn(self, name: str) -> int:
        code = self._codes.get(name)
        if code is None:
            code = self._codes[name] = _code(name)
            self._names.setdefault(code, name)
        return code

    def _unpack(self, frame):
        v = _HEADER.unpack_from(frame)      # Python floats and ints at once (no NumPy scalars)
        names, op, dtype = self._names, v[3], v[15]
        algorithm, variant = v[4] & 0xFFFFFFFF, v[4] >> 32        # the CRC-32 of its name; root and op above it
        header = _tuple_new(Header, (v[0], v[1], v[2], names.get(op) or f"#{op}",
                                     names.get(algorithm) or f"#{algorithm}", v[5], v[14],
                                     _DTYPE_NAMES[dtype] if dtype >= 0 else "", v[13], variant))
        return header, _DTYPES[v[6]], v[8:8 + v[7]]

    # -- transport ------------------------------------------------------------------------
    def _poll(self, test, peer, verb, receiving=False):
        """``test()`` until it returns something true, and return that: polls for ``SPIN_S``
        (only when every rank on this machine has a core of its own: see :func:`_spin_time`),
        then yields the core between polls until ``YIELD_S``, then sleeps between polls
        (doubling up to ``MAX_SLEEP_S``), so that a rank sharing this core can run; past
        ``timeout`` a hang becomes CommTimeoutError naming both ranks. ``receiving``: ``test``
        moves one of the posted receives on itself (the others are moved on between polls).
        While yielding, the clock is read every ``CLOCK_EVERY`` polls: a read costs about
        what a poll does, and each costs the rank that shares the core."""
        done = test()
        if done:
            return done
        start = now = time.monotonic()
        deadline, spin_until, yield_until = start + self.timeout, start + _SPIN["s"], start + YIELD_S
        nap, others, polls = MIN_SLEEP_S, int(receiving), 0
        while not (done := test()):
            if now < spin_until:                 # a core of its own: poll on
                now = time.monotonic()
                continue
            polls += 1
            if polls % CLOCK_EVERY == 0:
                now = time.monotonic()
                if now > deadline:
                    raise CommTimeoutError(self._describe_wait(peer, verb))
            if len(_POSTED) > others:            # receives posted but not waited for yet: a send to them completes
                _advance_posted()
            if now < yield_until:
                _yield()
            else:
                time.sleep(nap)                  # the core goes to whoever needs it, this rank included
                nap = min(2 * nap, MAX_SLEEP_S)
                polls = CLOCK_EVERY - 1          # read the clock after every sleep
        return done

    def _wait(self, reqs, peer, verb):
        """Until the MPI requests ``reqs`` complete (see :meth:`_poll`)."""
        self._poll(lambda: MPI.Request.Testall(reqs), peer, verb)

    def _post_send(self, x, dest, wire_tag, header):
        if x.nbytes <= INLINE_BYTES:      # one message: the frame [header | payload]
            frame = np.empty(HEADER_BYTES + x.nbytes, np.uint8)
            self._pack(header, x, frame)
            if x.nbytes:                  # a memoryview copy: a tenth of a NumPy slice assignment's cost
                memoryview(frame)[HEADER_BYTES:] = memoryview(x).cast("B")
            req = self._mpi.Isend([frame, MPI.BYTE], dest, wire_tag)
            if req.Test():                # sent eagerly (the usual case): nothing left to wait for
                return None
            reqs = [req]
        else:                             # the header's frame, then the payload in place
            h = np.empty(HEADER_BYTES, np.uint8)
            self._pack(header, x, h)
            reqs = [self._mpi.Isend([h, MPI.BYTE], dest, wire_tag), self._bulk.Isend(_bytes(x), dest, wire_tag)]
        return lambda: self._wait(reqs, dest, "send to")    # the closure keeps the buffers alive

    def _post_recv(self, source, wire_tag, out, first_in_line, on_header):
        call = self._coll
        if call is not None:            # so that a header naming my own collective decodes
            codes = self._codes
            if call.op not in codes or call.algorithm not in codes:
                self._learn(call.op)
                self._learn(call.algorithm)
        incoming = _Incoming(self, source, wire_tag, out, on_header)
        _POSTED.append(incoming)

        def finish():
            try:
                self._poll(incoming.advance, source, "receive from", receiving=True)
            finally:
                _POSTED.remove(incoming)
            return incoming.result()

        return finish

    def _send_object(self, obj, dest):
        req = self._ctrl.isend(obj, dest, CTRL_TAG)
        return lambda: self._wait([req], dest, "send control data to")

    def _recv_object(self, source):
        # probe, then receive: a receive posted before the message arrives gets mpi4py's
        # default 32 KiB buffer and truncates a larger pickle (a state dict, say)
        self._poll(lambda: self._ctrl.iprobe(source=source, tag=CTRL_TAG), source, "exchange control data with")
        return self._ctrl.recv(source=source, tag=CTRL_TAG)

    def _make_split(self, color, members):
        sub = self._mpi.Split(MPI.UNDEFINED if color is None else color,
                              members.index(self.rank) if color is not None else 0)
        if color is None:
            return None
        return MPIComm(sub, self.device, self.log, [self._world_ranks[m] for m in members],
                       self.timeout, self.debug)
