"""The communicator: the one interface both backends implement, and what they share.

A rank talks to others only through **point-to-point** messages — ``send``/``recv`` and
their non-blocking twins ``isend``/``irecv`` + ``wait`` — plus ``rank``, ``size`` and
``split``. Every collective in :mod:`minidist.distributed` is written on top of these, exactly as
MPICH writes MPI_Allreduce on top of MPI_Send/MPI_Recv.

This base class owns everything that must be identical on both backends:

* **simulated time** (Hockney's α-β model, as in Thakur, Rabenseifner & Gropp 2005): a
  send starts at the sender's comm-stream time ``t`` and keeps the link busy until it
  arrives at ``t + α + n/β``; a receive completes at ``max(own comm time, arrival)``. The
  arrival time travels *with* the message, so the receiver needs no global clock.
  Each rank has one outgoing and one incoming port (full duplex): its sends queue behind
  each other, and so do its receives (stream ``"comm.in"``), so a root receiving from
  ``p−1`` ranks pays ``(p−1)·(α + n/β)`` as in Thakur et al.'s model.
* **the message log** (:mod:`minidist.distributed.log`) and one trace event per message;
* **collective calls** (:meth:`Communicator.collective`, written out in :mod:`.call`): the
  debug-mode check that all ranks entered the same collective, the "issued by the compute
  stream" start time, and the :class:`~minidist.distributed.call.Work` handle that lets
  compute wait for the simulated completion.

Backends (:mod:`.inproc`, :mod:`.mpi`) only move ``(array, Header)`` pairs.
Tags: plain ``send``/``recv`` use the caller's tag (0 ≤ tag < 16384); collectives use
``COLL_TAG + tag`` so they can never be confused with a pipeline's activations.
"""
from __future__ import annotations

import typing

import numpy as np

from .call import CollectiveCall, CollectiveScope, describe_variant
from .errors import CollectiveMismatchError
from .log import MessageEntry
from .ops import contiguous

COLL_TAG = 1 << 14            # collectives' messages use COLL_TAG + tag
CTRL_TAG = (1 << 15) - 1      # debug signatures and split: never logged, never timed


class Header(typing.NamedTuple):
    """What travels with every payload: its simulated timing and who sent it from where
    (a named tuple: made twice per message, it costs a third of a frozen dataclass)."""

    t_start: float
    arrival: float
    nbytes: int
    op: str
    algorithm: str
    step: int
    count: int = -1       # elements of the sender's collective input (-1: none, e.g. a non-root broadcast)
    dtype: str = ""       # and their dtype: receivers compare both with their own, always
    shape_code: int = -1  # and their shape, as a number (:func:`minidist.distributed.call.shape_code`)
    variant: int = 0      # and the collective's root and reduction op (:func:`minidist.distributed.call.variant`)


_tuple_new = tuple.__new__      # Header(*fields) without the named tuple's Python-level __new__


class Request:
    """Handle of a non-blocking send or receive; ``wait()`` returns the received array."""

    def __init__(self, finish):
        self._finish = finish
        self._done = False
        self._value = None

    def wait(self):
        if not self._done:
            self._value = self._finish()
            self._done, self._finish = True, None
        return self._value


class _Sent(Request):
    """A send that completed when it was posted (a buffered send): ``wait()`` returns None."""

    def __init__(self):
        super().__init__(None)
        self._done = True


SENT = _Sent()       # one for all: a backend's ``_post_send`` returns None for such a send


class Communicator:
    """A group of ranks that can exchange messages. Subclasses implement the transport."""

    backend = "base"

    def __init__(self, rank, size, device, log, world_ranks, timeout=60.0, debug=False):
        self.rank, self.size, self.device, self.log = rank, size, device, log
        self.timeout, self.debug = float(timeout), bool(debug)
        self._world_ranks = list(world_ranks)
        self._me = self._world_ranks[rank]      # this rank's world rank (on every message: looked up once)
        self._coll: CollectiveCall | None = None
        self._posted: dict[tuple, list] = {}      # (source, wire tag) -> receives not yet completed

    def world_rank(self, r: int | None = None) -> int:
        """World rank of this communicator's rank ``r`` (default: this rank)."""
        return self._world_ranks[self.rank if r is None else r]

    @property
    def call(self) -> CollectiveCall | None:
        """The collective in progress on this rank (algorithms set ``call.step``)."""
        return self._coll

    @property
    def group(self) -> tuple:
        return tuple(self._world_ranks)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} rank {self.rank}/{self.size} world ranks {self.group}>"

    # -- point-to-point -------------------------------------------------------------------
    def send(self, x, dest: int, tag: int = 0) -> None:
        self.isend(x, dest, tag).wait()

    def recv(self, source: int, tag: int = 0, out: np.ndarray | None = None) -> np.ndarray:
        """Receive an array from ``source``. Shape and dtype travel with the message on both
        backends; give ``out`` (a contiguous array of the right size) to receive in place."""
        return self.irecv(source, tag, out).wait()

    def sendrecv(self, x, dest: int, source: int, tag: int = 0, out=None) -> np.ndarray:
        """Send to ``dest`` and receive from ``source`` at once (MPI_Sendrecv)."""
        req = self.isend(x, dest, tag)   # posted first so that two neighbours never wait on each other
        y = self.irecv(source, tag, out).wait()
        req.wait()
        return y

    def batch_isend_irecv(self, ops: list) -> list:
        """Post a batch of point-to-point operations at once and return their requests, in
        the order given (torch.distributed's ``batch_isend_irecv``; Megatron's
        ``_batched_p2p_ops``, picotron's ``bidirectional_pipeline_communicate``). ``ops``:
        ``("isend", array, peer, tag)`` and ``("irecv", out_or_None, peer, tag)`` tuples.
        Every receive is posted before any request is waited for, so two ranks that
        exchange in one batch each never wait for the other, even when a send completes only
        once its receive is posted (rendezvous)."""
        reqs: list = [None] * len(ops)
        for pass_ops in (("irecv",), ("isend",)):            # receives first: posted when the batch is
            for k, (op, array, peer, tag) in enumerate(ops):
                if op not in ("isend", "irecv"):
                    raise ValueError(f"batch_isend_irecv: op must be 'isend' or 'irecv', got {op!r}")
                if op in pass_ops:
                    reqs[k] = self.irecv(peer, tag, array) if op == "irecv" else self.isend(array, peer, tag)
        return reqs

    def isend(self, x, dest: int, tag: int = 0) -> Request:
        # every message of every collective passes here (a 64-rank ZeRO-3 step: 36,288 of them),
        # so the common case is written flat: one clock call, no per-message helper objects
        if type(dest) is not int or not 0 <= dest < self.size or dest == self.rank:
            self._check_peer(dest)       # raises, or accepts a NumPy integer
        if type(x) is not np.ndarray or not x.flags.c_contiguous:
            x = contiguous(x)            # a 0-d array stays 0-d (np.ascontiguousarray makes it 1-d)
        call, device = self._coll, self.device
        clock = device.clock
        if call is None:     # a plain send is issued by the compute stream: it starts after it
            clock.wait("comm", clock.now("compute"))
            stream, op, algorithm, step, phase = "comm", "send", "p2p", 0, ""
            nbytes, count, dtype, code, variant = int(x.nbytes), -1, "", -1, 0
        else:
            stream, op, algorithm, step, phase = call.stream, call.op, call.algorithm, call.step, call.phase
            bpe = call.bytes_per_element
            nbytes = int(x.size * bpe) if bpe else int(x.nbytes)
            count, dtype, code, variant = call.count, call.dtype, call.shape_code, call.variant
        t0, t1 = clock.send(stream, device.spec.message_time(nbytes))   # one outgoing port: sends queue
        peer = self._world_ranks[dest]
        self.log.add(MessageEntry(self._me, op, algorithm, step, phase, "send", peer, nbytes, t0, t1, tag))
        trace = device.trace
        if trace.enabled:
            trace.complete(f"send {nbytes}B -> {peer}", "comm", stream, t0, t1,
                           {"op": op, "algorithm": algorithm, "step": step})
        if not 0 <= tag < COLL_TAG:
            self._wire_tag(tag)          # raises
        header = _tuple_new(Header, (t0, t1, nbytes, op, algorithm, step, count, dtype, code, variant))
        finish = self._post_send(x, dest, tag if call is None else tag + COLL_TAG, header)
        return SENT if finish is None else Request(finish)

    def irecv(self, source: int, tag: int = 0, out: np.ndarray | None = None) -> Request:
        if type(source) is not int or not 0 <= source < self.size or source == self.rank:
            self._check_peer(source)
        call = self._coll
        step = call.step if call is not None else 0      # the step that posted it: its log label
        if not 0 <= tag < COLL_TAG:
            self._wire_tag(tag)          # raises
        if out is not None and (type(out) is not np.ndarray or not out.flags.writeable):
            self._check_out(out)         # raises, or accepts an ndarray subclass
        key = (source, tag if call is None else tag + COLL_TAG)
        line = self._posted.get(key)
        if line is None:
            line = self._posted[key] = []
        raw = self._post_recv(source, key[1], out, not line,
                              lambda h: self._check_header(h, source, call, step))

        def finish():
            # receives from one peer with one tag complete in posting order (MPI's non-overtaking rule)
            while line[0] is not req:
                line[0].wait()
            line.pop(0)
            payload, header = raw()
            self._complete_recv(header, source, tag, call, step)
            return payload

        req = Request(finish)
        line.append(req)
        return req

    def _check_header(self, header: Header, source, call, step):
        """Called by the backend as soon as a header arrives, before the payload is read:
        the same collective, and an input of the same size and dtype (checked on every
        message, debug or not: a mismatch would otherwise give wrong numbers silently)."""
        if call is None:
            return
        if header.op != call.op or header.algorithm != call.algorithm:
            raise CollectiveMismatchError(
                f"rank {self.world_rank()} is in {call.op}(algorithm={call.algorithm!r}) step {step} "
                f"but received from rank {self.world_rank(source)} a message of "
                f"{header.op}(algorithm={header.algorithm!r}) step {header.step}: the ranks called "
                f"different collectives. Rerun with debug=True for a report of every rank.")
        if header.variant != call.variant:
            raise CollectiveMismatchError(
                f"rank {self.world_rank()} called {call.op} with {describe_variant(call.variant)} but rank "
                f"{self.world_rank(source)} with {describe_variant(header.variant)}: every rank must give the "
                f"same root and reduction op (rerun with debug=True to see every rank's call)")
        if header.count >= 0 and call.count >= 0 and (header.count != call.count or header.dtype != call.dtype
                                                      or header.shape_code != call.shape_code):
            theirs = f"{header.count} element(s) of {header.dtype}" + \
                (" in another shape" if (header.count, header.dtype) == (call.count, call.dtype) else "")
            raise CollectiveMismatchError(
                f"rank {self.world_rank()} called {call.op} with {call.dtype} of shape {call.shape} but rank "
                f"{self.world_rank(source)} with {theirs}: every rank must pass an array of the same shape and "
                f"dtype (rerun with debug=True to see every rank's call)")

    def _complete_recv(self, header: Header, source, tag, call, step):
        device = self.device
        clock, nbytes = device.clock, header.nbytes
        # a receive cannot complete before the data arrives, nor before the incoming link has
        # finished the previous message (one port in, one out: incast to a root serialises)
        if call is None:
            t_end = clock.receive("comm", "comm.in", header.arrival, device.spec.message_time(nbytes))
            self.log.add(MessageEntry(self._me, "recv", "p2p", 0, "", "recv", self._world_ranks[source],
                                      nbytes, header.t_start, t_end, tag))
            clock.wait("compute", t_end)     # a plain recv: the compute stream needs the data
            return
        t_end = clock.receive(call.stream, call.inport, header.arrival, device.spec.message_time(nbytes))
        self.log.add(MessageEntry(self._me, call.op, call.algorithm, step, call.phase, "recv",
                                  self._world_ranks[source], nbytes, header.t_start, t_end, tag))

    def _wire_tag(self, tag: int) -> int:
        if not 0 <= tag < COLL_TAG:
            raise ValueError(f"tag must be in [0, {COLL_TAG}), got {tag}")
        return tag + COLL_TAG if self._coll is not None else tag

    def _check_peer(self, r):
        if not (isinstance(r, (int, np.integer)) and 0 <= r < self.size):
            raise ValueError(f"peer rank {r!r} is not in this communicator of size {self.size}")
        if r == self.rank:
            raise ValueError(f"rank {self.rank} cannot send to or receive from itself")

    @staticmethod
    def _check_out(out):
        if not isinstance(out, np.ndarray):
            raise TypeError(f"recv(out=...) needs a NumPy array to write the message into, got "
                            f"{type(out).__name__}; for one number pass a 1-element slice such as a[j:j+1]")
        if not out.flags.writeable:
            raise ValueError("recv(out=...) got a read-only array: the message cannot be written into it; "
                             "pass a writeable array (or out=None for a new one)")

    def _describe_wait(self, peer: int, verb: str) -> str:
        c = self._coll
        where = f"in {c.op}(algorithm={c.algorithm!r}) step {c.step}" if c else "in a plain send/recv"
        return (f"rank {self.world_rank()} timed out after {self.timeout:g} s waiting to {verb} rank "
                f"{self.world_rank(peer)} {where} (communicator of world ranks {list(self.group)}). "
                f"A rank probably skipped, reordered or never reached this call; "
                f"rerun with debug=True to check that all ranks call the same collectives.")

    # -- sub-communicators ----------------------------------------------------------------
    def split(self, color, key: int = 0) -> Communicator | None:
        """Collective: ranks with the same ``color`` form a new communicator, ordered by
        ``(key, old rank)`` (MPI_Comm_split). ``color=None`` joins none and returns None.
        The new communicator shares this rank's device and message log."""
        pairs = self._exchange_objects((color, key))
        if color is None:
            self._make_split(None, [])
            return None
        members = sorted((k, r) for r, (c, k) in enumerate(pairs) if c == color)
        colors = list(dict.fromkeys(c for c, _ in pairs if c is not None))   # first-seen order
        return self._make_split(colors.index(color), [r for _, r in members])

    def dup(self) -> Communicator:
        """Collective: a private copy of this communicator (MPI_Comm_dup). Its ``device`` and
        ``log`` may be replaced, e.g. by a fresh Device so that a measurement starts at t = 0."""
        return self.split(0, self.rank)

    # -- collectives ----------------------------------------------------------------------
    def collective(self, op, algorithm, x=None, *, root=None, reduce_op=None, stream="comm",
                   wire_dtype=None, bytes_per_element=None, tag=0) -> CollectiveScope:
        """Context of one collective call: labels its messages, times it, checks it (debug).
        ``with comm.collective(...) as call:`` — see :class:`CollectiveScope`."""
        return CollectiveScope(self, op, algorithm, x, root, reduce_op, stream, wire_dtype, bytes_per_element, tag)

    def exchange_objects(self, obj) -> list:
        """Collective: every rank's ``obj`` (picklable) in rank order, on the control channel —
        bookkeeping such as a checkpoint's file list, so neither logged nor timed."""
        return self._exchange_objects(obj)

    def _exchange_objects(self, obj) -> list:
        """Every rank's ``obj`` in rank order (control traffic: not logged, not timed)."""
        reqs = [self._send_object(obj, r) for r in range(self.size) if r != self.rank]
        out = [obj if r == self.rank else self._recv_object(r) for r in range(self.size)]
        for wait in reqs:
            wait()
        return out

    # -- what a backend implements --------------------------------------------------------
    def _post_send(self, x, dest, wire_tag, header):        # -> finish() -> None
        raise NotImplementedError

    def _post_recv(self, source, wire_tag, out, first_in_line, on_header):  # -> finish() -> (array, Header)
        raise NotImplementedError

    def _send_object(self, obj, dest):                     # -> finish() -> None
        raise NotImplementedError

    def _recv_object(self, source):
        raise NotImplementedError

    def _make_split(self, color, members):
        raise NotImplementedError
