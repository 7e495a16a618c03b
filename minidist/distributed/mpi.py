"""The MPI backend: one rank per process, over mpi4py (imported only by this module).

Launch a program with ``mpirun -n 4 python prog.py``; inside, ``dist.init()`` (or
``dist.run_main(fn)``) returns an :class:`MPIComm` over ``MPI.COMM_WORLD``. Collectives
are *not* MPI's: they are the same Python algorithms as in-process, on top of MPI's
point-to-point, so the results and the message log are the same on both backends.

How a message travels: every payload is preceded by a 16-number **header** (simulated
start and arrival time, wire bytes, collective/algorithm/step, dtype and shape) on a
duplicate communicator, so headers and payloads never match each other. Payloads go as
raw bytes with the buffer-based ``Isend``/``Irecv`` (no pickle, no copy); when the
receiver gives ``out=`` the payload ``Irecv`` is posted at once so the data lands in place.

Every wait polls ``Testall`` until a deadline (``timeout``), so a deadlock becomes a
:class:`CommTimeoutError` naming the ranks, and ``run_main`` aborts the whole job.
"""
from __future__ import annotations

import math
import os
import sys
import threading
import time
import traceback
import zlib

import numpy as np
from mpi4py import MPI

from ..device import Device
from .collectives import ALGORITHMS
from .comm import CTRL_TAG, Communicator, Header
from .errors import CommError, CommTimeoutError
from .log import MessageLog
from . import watchdog

ABORT_GRACE_S = 0.25      # see abort_job
_POLLS_BEFORE_YIELD = 100   # spin this many polls before yielding the core (as MPICH does)
HEADER_LEN = 16          # t_start, arrival, nbytes, op, algorithm, step, dtype, ndim, shape[0..4],
MAX_NDIM = 5             # and the collective's input: shape code, element count, dtype
_DTYPES = [np.dtype(t) for t in ("float64", "float32", "float16", "int64", "int32", "int16", "int8",
                                 "uint64", "uint32", "uint16", "uint8", "bool", "complex128", "complex64")]
# dtype (and its name) -> header code, built once: a per-message str(dtype) costs more than the message
_DTYPE_CODE = {d: i for i, d in enumerate(_DTYPES)}
_DTYPE_NAMES = [str(d) for d in _DTYPES]
_DTYPE_NAME_CODE = {name: i for i, name in enumerate(_DTYPE_NAMES)}


def _code(name: str) -> int:
    """A collective/algorithm name as a number that fits a float64 header slot exactly."""
    return zlib.crc32(name.encode())


def _known_names() -> dict[int, str]:
    names = {"send", "recv", "p2p"} | set(ALGORITHMS)
    for table in ALGORITHMS.values():
        names |= set(table)
    return {_code(n): n for n in names}


def _bytes(a: np.ndarray):
    """The array's memory as an MPI byte buffer, without a copy."""
    return [a.reshape(-1).view(np.uint8), MPI.BYTE]


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
        self._hdr = mpi_comm.Dup()      # headers: their own context, never matched by a payload
        self._ctrl = mpi_comm.Dup()     # debug signatures and split: never logged
        self._names = _known_names()     # code -> name; collectives defined elsewhere join on use

    @classmethod
    def world(cls, device=None, timeout: float = 60.0, debug: bool = False) -> MPIComm:
        w = MPI.COMM_WORLD
        return cls(w.Dup(), Device(device, rank=w.Get_rank()), MessageLog(), range(w.Get_size()), timeout, debug)

    # -- headers --------------------------------------------------------------------------
    def _pack(self, header: Header, x: np.ndarray) -> np.ndarray:
        if x.ndim > MAX_NDIM or x.dtype not in _DTYPE_CODE:
            raise TypeError(f"the MPI backend sends arrays of <= {MAX_NDIM} dims of {[str(d) for d in _DTYPES]}, "
                            f"got {x.dtype} of shape {x.shape}")
        h = np.zeros(HEADER_LEN)
        h[:8] = (header.t_start, header.arrival, header.nbytes, self._learn(header.op),
                 self._learn(header.algorithm), header.step, _DTYPE_CODE[x.dtype], x.ndim)
        h[8:8 + x.ndim] = x.shape
        h[13], h[14], h[15] = header.shape_code, header.count, _DTYPE_NAME_CODE.get(header.dtype, -1)
        return h

    def _learn(self, name: str) -> int:
        code = _code(name)
        self._names.setdefault(code, name)
        return code

    def _unpack(self, h: np.ndarray):
        v = h.tolist()      # Python floats at once: indexing the array element by element costs more
        op, algorithm, ndim, dtype = int(v[3]), int(v[4]), int(v[7]), int(v[15])
        names = self._names
        header = Header(v[0], v[1], int(v[2]), names.get(op) or f"#{op}", names.get(algorithm) or f"#{algorithm}", int(v[5]),
                        int(v[14]), _DTYPE_NAMES[dtype] if dtype >= 0 else "", int(v[13]))
        return header, _DTYPES[int(v[6])], tuple(int(n) for n in v[8:8 + ndim])

    # -- transport ------------------------------------------------------------------------
    def _wait(self, reqs, peer, verb):
        """Poll until ``reqs`` complete; a deadline turns a hang into CommTimeoutError."""
        if MPI.Request.Testall(reqs):
            return
        deadline, spins = time.monotonic() + self.timeout, 0
        while not MPI.Request.Testall(reqs):
            spins += 1
            if spins % 64 == 0 and time.monotonic() > deadline:
                raise CommTimeoutError(self._describe_wait(peer, verb))
            if spins > _POLLS_BEFORE_YIELD:
                os.sched_yield()    # cheap; lets another rank sharing this core make progress

    def _post_send(self, x, dest, wire_tag, header):
        h = self._pack(header, x)
        reqs = [self._hdr.Isend(h, dest, wire_tag), self._mpi.Isend(_bytes(x), dest, wire_tag)]
        return lambda: self._wait(reqs, dest, "send to")    # the closure keeps h and x alive

    def _post_recv(self, source, wire_tag, out, first_in_line, on_header):
        if self._coll is not None:      # so that a header naming my own collective decodes
            self._learn(self._coll.op)
            self._learn(self._coll.algorithm)
        h = np.empty(HEADER_LEN)
        hreq = self._hdr.Irecv(h, source, wire_tag)
        early = out is not None and first_in_line and out.flags.c_contiguous
        # with out= and no earlier receive pending on this (source, tag), post the payload now
        preq = self._mpi.Irecv(_bytes(out), source, wire_tag) if early else None

        def finish():
            self._wait([hreq], source, "receive from")
            header, dtype, shape = self._unpack(h)
            on_header(header)
            if out is not None and (out.dtype != dtype or out.size != math.prod(shape)):
                raise ValueError(f"recv into a {out.dtype} buffer of {out.size} elements but rank "
                                 f"{self.world_rank(source)} sent {dtype} of shape {shape}")
            if preq is not None:
                self._wait([preq], source, "receive from")
                return out, header
            target = np.empty(shape, dtype)
            self._wait([self._mpi.Irecv(_bytes(target), source, wire_tag)], source, "receive from")
            if out is not None:
                out.reshape(-1)[...] = target.reshape(-1)
                target = out
            return target, header

        return finish

    def _send_object(self, obj, dest):
        req = self._ctrl.isend(obj, dest, CTRL_TAG)
        return lambda: self._wait([req], dest, "send control data to")

    def _recv_object(self, source):
        # probe, then receive: a receive posted before the message arrives gets mpi4py's
        # default 32 KiB buffer and truncates a larger pickle (a state dict, say)
        deadline = time.monotonic() + self.timeout
        while True:
            if self._ctrl.iprobe(source=source, tag=CTRL_TAG):
                return self._ctrl.recv(source=source, tag=CTRL_TAG)
            if time.monotonic() > deadline:
                raise CommTimeoutError(self._describe_wait(source, "exchange control data with"))
            time.sleep(1e-5)

    def _make_split(self, color, members):
        sub = self._mpi.Split(MPI.UNDEFINED if color is None else color,
                              members.index(self.rank) if color is not None else 0)
        if color is None:
            return None
        return MPIComm(sub, self.device, self.log, [self._world_ranks[m] for m in members],
                       self.timeout, self.debug)
