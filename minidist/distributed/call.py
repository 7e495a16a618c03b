"""One collective call on one rank: its labels, its clock and its record.

Every collective enters ``with comm.collective(op, algorithm, x) as call:``
(:meth:`minidist.distributed.comm.Communicator.collective`): the :class:`CollectiveScope` it
enters checks the call (debug mode), starts it when the compute stream issues it, and makes a
:class:`CollectiveCall` the rank's current call — the labels every message of the call
carries (op, algorithm, step, phase) and the input every receiver compares with its own
(element count, dtype, shape code). Leaving records the call in the message log and the
trace. :class:`Work` is what ``async_op=True`` returns. Every collective call passes here,
nested ones included (a ring all-reduce is three), so the scope is a class with tables for
the dtype names and shape codes rather than a generator that formats and hashes them each time.
"""
from __future__ import annotations

import zlib

import numpy as np

from ..memory import DTYPE_BYTES
from .debug import check_same_collective
from .log import CollectiveRecord
from .ops import REDUCE_OPS


def shape_code(shape) -> int:
    """A shape as one number that fits a float64 header slot exactly (its CRC-32)."""
    return zlib.crc32(repr(tuple(int(n) for n in shape)).encode())


class Work:
    """Handle of a collective started with ``async_op=True`` (torch.distributed's Work).

    The data is computed eagerly; only *simulated* time is deferred: ``wait()`` makes the
    rank's compute stream wait until the collective's completion time on the comm stream.
    """

    def __init__(self, result, completion_time: float, device):
        self.result = result
        self.completion_time = completion_time
        self._device = device

    def wait(self):
        self._device.clock.wait("compute", self.completion_time)
        return self.result


class CollectiveCall:
    """State of one collective in progress on one rank: labels for the log, current step."""

    def __init__(self, comm, op, algorithm, stream, bytes_per_element, tag, phase="", nested=False):
        self.comm, self.op, self.algorithm, self.stream = comm, op, algorithm, stream
        self.bytes_per_element, self.tag, self.phase, self.nested = bytes_per_element, tag, phase, nested
        self.step = 0
        self.inport = stream + ".in"       # the incoming link of ``stream`` (Communicator._complete_recv)
        self.t_start = self.t_end = comm.device.clock.now(stream)
        self.count, self.dtype, self.shape_code = -1, "", -1     # this rank's input (Communicator.collective)
        self.shape = None
        self.variant = 0                   # its root and reduction op, as one number (:func:`variant`)

    def result(self, out, async_op: bool = False):
        """Return ``out`` after making compute wait (blocking) or as a :class:`Work` (async)."""
        if self.nested:
            return out
        work = Work(out, self.t_end, self.comm.device)
        return work if async_op else work.wait()


_REDUCE_NAMES = tuple(REDUCE_OPS)


def variant(root, reduce_op) -> int:
    """A collective's root and reduction op as one number that rides in every message's header
    (0: neither): ``root + 1`` in the low 16 bits, the op's place in ``REDUCE_OPS`` + 1 above.
    Ranks that disagree on either would otherwise exchange the right-sized messages and compute
    a wrong result without a word."""
    code = 0 if root is None else int(root) + 1
    if reduce_op is not None:
        name = str(getattr(reduce_op, "value", reduce_op))
        code |= (_REDUCE_NAMES.index(name) + 1 if name in _REDUCE_NAMES else 15) << 16
    return code


def describe_variant(code: int) -> str:
    """The root and op a :func:`variant` number stands for, for a message."""
    root, op = (code & 0xFFFF) - 1, code >> 16
    parts = ([f"root={root}"] if root >= 0 else []) + \
        ([f"op={_REDUCE_NAMES[op - 1]!r}" if op <= len(_REDUCE_NAMES) else "another op"] if op else [])
    return ", ".join(parts) or "no root or op"


def _input_signature(x) -> tuple[int, str, tuple, int]:
    """A collective input's element count, dtype name, shape and shape code (:func:`shape_code`):
    what every message of the call carries for the receivers' check. The names and codes
    are looked up in tables filled on first use (``str(dtype)`` and a CRC cost microseconds,
    on every collective call)."""
    if not isinstance(x, np.ndarray):
        x = np.asarray(x)
    dtype, shape = x.dtype, x.shape
    name = _DTYPE_NAMES.get(dtype)
    if name is None:
        name = _DTYPE_NAMES[dtype] = str(dtype)
    code = _SHAPE_CODES.get(shape)
    if code is None:
        if len(_SHAPE_CODES) >= _SHAPE_CODES_MAX:
            _SHAPE_CODES.clear()
        code = _SHAPE_CODES[shape] = shape_code(shape)
    return x.size, name, shape, code


_DTYPE_NAMES: dict = {}
_SHAPE_CODES: dict = {}        # shape -> shape_code(shape); cleared when it reaches the bound
_SHAPE_CODES_MAX = 4096


class CollectiveScope:
    """What ``with comm.collective(op, algorithm, x):`` enters (a class rather than a
    generator-based context manager: every collective call, nested ones included, passes
    here). Entering checks the call (debug mode), starts it when the compute stream issues
    it and makes it the rank's current call; leaving records it in the message log and the
    trace. A collective entered inside another (a ring all-reduce's reduce-scatter) is a
    *phase* of the outer one: its messages carry the outer labels, and it is not recorded."""

    __slots__ = ("comm", "op", "algorithm", "x", "root", "reduce_op", "stream", "wire_dtype",
                 "bytes_per_element", "tag", "call", "outer", "mark")

    def __init__(self, comm, op, algorithm, x, root, reduce_op, stream, wire_dtype, bytes_per_element, tag):
        self.comm, self.op, self.algorithm, self.x, self.root = comm, op, algorithm, x, root
        self.reduce_op, self.stream, self.wire_dtype = reduce_op, stream, wire_dtype
        self.bytes_per_element, self.tag = bytes_per_element, tag

    def __enter__(self) -> CollectiveCall:
        comm = self.comm
        outer = self.outer = comm._coll
        if outer is not None:   # a collective composed of others, e.g. ring all-reduce
            call = CollectiveCall(comm, outer.op, outer.algorithm, outer.stream,
                                  outer.bytes_per_element, outer.tag, phase=self.op, nested=True)
            call.count, call.dtype, call.shape_code, call.shape = outer.count, outer.dtype, outer.shape_code, outer.shape
            call.variant = outer.variant
            comm._coll = self.call = call
            return call
        op, root, bytes_per_element, stream, x = self.op, self.root, self.bytes_per_element, self.stream, self.x
        if root is not None and not (isinstance(root, (int, np.integer)) and 0 <= root < comm.size):
            raise ValueError(f"{op}: root={root!r} is not a rank of this communicator of size {comm.size}; "
                             f"give a root in [0, {comm.size - 1}]")
        if self.wire_dtype is not None:
            bytes_per_element = DTYPE_BYTES[self.wire_dtype]
        if comm.debug:
            check_same_collective(comm, op, self.algorithm, x, root, self.reduce_op)
        clock = comm.device.clock
        # issued by the compute stream: the first message leaves when both streams are free
        clock.wait(stream, clock.now("compute"))
        call = CollectiveCall(comm, op, self.algorithm, stream, bytes_per_element, self.tag)
        if root is not None or self.reduce_op is not None:
            call.variant = variant(root, self.reduce_op)
        if x is not None:
            call.count, call.dtype, call.shape, call.shape_code = _input_signature(x)
        self.mark = comm.log.mark()
        comm._coll = self.call = call
        return call

    def __exit__(self, exc_type, exc, tb) -> bool:
        comm, call = self.comm, self.call
        comm._coll = self.outer
        call.t_end = t_end = comm.device.clock.now(call.stream)
        if call.nested or exc_type is not None:
            return False
        log = comm.log
        sent, received, messages = log.traffic_since(self.mark)
        log.collectives.append(CollectiveRecord(
            comm._me, call.op, call.algorithm, tuple(comm._world_ranks), call.t_start, t_end, sent, received,
            messages))
        trace = comm.device.trace
        if trace.enabled:
            trace.complete(f"{call.op}[{call.algorithm}]", "comm", call.stream, call.t_start, t_end,
                           {"bytes_sent": sent, "group": list(comm._world_ranks)})
        return False
