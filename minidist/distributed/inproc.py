"""The in-process backend: N ranks as N threads of one Python process.

``spawn(fn, world_size=4)`` starts one thread per rank, gives each its own
:class:`~minidist.device.Device` (activated in that thread with ``with comm.device:``)
and its own message log, and runs ``fn(comm, *args, **kwargs)`` on every rank::

    from minidist import distributed as dist
    def main(comm):
        return dist.all_reduce(comm, np.full(4, comm.rank + 1.0))
    dist.spawn(main, world_size=4)      # -> [array([10., 10., 10., 10.]), ...]

Messages travel through mailboxes, one FIFO per (communicator, source, destination, tag).
A send copies the array into the mailbox at once; a receive waits for its mailbox — until
the timeout, or until another rank fails, whichever comes first. When a send *completes*
(``send`` returns, an ``isend``'s ``wait`` returns) depends on the mode:

* **buffered** (the default, MPI's *eager* protocol for small messages): at once;
* **rendezvous** (``spawn(..., rendezvous=True)``, or ``MINIDIST_P2P=rendezvous`` in the
  environment): only once the matching receive has been *posted* (``recv``/``irecv``
  called), as MPI_Ssend does and as NCCL's send does, which waits for its receiver. A
  program that relies on a send returning before its peer gets to the receive — two ranks
  that both ``send`` to each other before they ``recv`` — hangs on real hardware, and here
  stops with :class:`DeadlockError`. Control data (``exchange_objects``) stays buffered.

In rendezvous mode, whenever every running rank is blocked — in a receive whose message was
never sent, or in a send whose receive was never posted — no rank can ever move again: the
rank that sees it raises :class:`DeadlockError` naming every rank and the operation it waits
in, at once rather than after the timeout (buffered mode waits for the timeout, as MPI
would hang). The first exception on any rank wakes every other rank
(:class:`PeerFailedError`) and is re-raised by ``spawn`` with its rank in the message.

**One rank runs at a time.** The ranks are threads under one interpreter lock (the GIL), so
they never computed in parallel; but when all p of them were runnable, every NumPy call that
let go of the GIL started a fight among them for it, and at 64 ranks the threads spent more
time handing the lock around (in the kernel) than computing. So a rank holds the world's
*run token* while it runs and gives it up only while it waits for a message (parked in a
receive, or in a rendezvous send): then the next rank whose message has arrived takes it.
Each rank's work is unchanged, and so is every number (which rank runs when never changed
what a rank computes or its simulated clock); a 64-rank ZeRO-3 step of a tiny GPT went from
4.2 s to about 2 s of wall time (``benchmarks/bench_scaling.py``). ``MINIDIST_RUNNING_RANKS=N``
lets N ranks run at once (NumPy's BLAS releases the GIL: two ranks' matrix products can use
two cores). A rank that waits for something other than a message (a ``threading.Barrier``
between ranks, its own threads) keeps the token; a rank that waits for the token longer than
``TOKEN_WAIT_S`` goes on without it, so such a wait is slow, never a hang; code that does it
on purpose wraps the wait in :func:`let_others_run`.
"""
from __future__ import annotations

import collections
import contextlib
import os
import threading
import time

from ..defaults import DEFAULT_DEVICE
from ..device import Device
from .comm import COLL_TAG, CTRL_TAG, Communicator
from .errors import (CollectiveMismatchError, CommError, CommTimeoutError, DeadlockError, PeerFailedError,
                     undelivered, with_rank)
from .log import MessageLog


# how long a rank that could run waits for the run token before it runs without it (the
# holder is then waiting for something that is not a message; see the module docstring)
TOKEN_WAIT_S = 0.5
_RUNNING = threading.local()         # in a rank's thread: .world (its _World) and .holds (the token)


def _running_ranks() -> int:
    """How many ranks may run at once: ``MINIDIST_RUNNING_RANKS`` (default 1)."""
    text = os.environ.get("MINIDIST_RUNNING_RANKS", "1")
    try:
        n = int(text)
    except ValueError:
        n = 0
    if n < 1:
        raise ValueError(f"MINIDIST_RUNNING_RANKS must be a whole number >= 1 (how many in-process ranks may run "
                         f"at once), got {text!r}; unset it for one at a time")
    return n


class _World:
    """Mailboxes shared by the threads of one ``spawn``, who has failed or finished, and what
    every blocked rank is waiting for (to see a deadlock as soon as it happens)."""

    def __init__(self, size: int, rendezvous: bool = False):
        self.size, self.rendezvous = size, rendezvous
        # one lock for the state, and one parking lock per world rank that its thread sleeps on
        # when it must wait: a message wakes only the rank it is for (one condition for all
        # would wake all p ranks at every message, and the p threads would fight for the lock
        # and the GIL: a step would cost O(p²) wake-ups). A parking lock is held while nobody
        # has signalled its rank; ``signalled[r]`` says it was released and not yet consumed.
        self.lock = threading.Lock()
        self.parking = [threading.Lock() for _ in range(size)]
        for park in self.parking:
            park.acquire()
        self.signalled = [False] * size
        self.boxes: dict[tuple, collections.deque] = collections.defaultdict(collections.deque)
        self.sent: dict[tuple, int] = collections.defaultdict(int)       # key -> sends made
        self.posted: dict[tuple, int] = collections.defaultdict(int)     # key -> receives posted
        self.failed: tuple[int, BaseException] | None = None
        self.finished = [False] * size
        self.blocked: dict[int, tuple] = {}       # world rank -> (can_go() -> bool, what it waits in)
        self.token = threading.Semaphore(_running_ranks())

    def run(self) -> None:
        """The calling rank thread (re)takes the run token, or gives up after TOKEN_WAIT_S."""
        _RUNNING.holds = self.token.acquire(True, TOKEN_WAIT_S)

    def pause(self) -> bool:
        """The calling thread gives up the run token if it is one of this world's rank threads
        holding it; returns whether it did (and must call :meth:`run` again)."""
        if getattr(_RUNNING, "world", None) is not self:
            return False
        if _RUNNING.holds:
            _RUNNING.holds = False
            self.token.release()
        return True

    def _raise_if_failed(self, rank):
        if self.failed is not None:
            r, exc = self.failed
            raise PeerFailedError(f"rank {rank} stopped because rank {r} failed with "
                                  f"{type(exc).__name__}: {exc}")

    def put(self, key, item, rank) -> int:
        """Append a message; returns its index among the sends on ``key``."""
        with self.lock:
            if self.failed is not None:
                self._raise_if_failed(rank)
            self.boxes[key].append(item)
            k = self.sent[key]
            self.sent[key] = k + 1
            if key[2] in self.blocked:            # the receiver (key: ctx, source, dest, tag), if it waits
                self._wake(key[2])
            return k

    def post(self, key) -> None:
        """A receive on ``key`` is posted: the rendezvous send it matches may complete (a
        buffered send completes at once: nobody counts the receives)."""
        if not self.rendezvous:
            return
        with self.lock:
            self.posted[key] += 1
            self._wake(key[1])                    # the sender, waiting in matched()

    def take(self, key, rank, source, timeout, describe, what=lambda: "a receive"):
        box = self.boxes[key]
        if box:             # sent already: only this rank takes from its mailboxes, so no lock is needed
            return box.popleft()
        with self.lock:                           # not sent yet: wait for it
            self._wait(box.__len__, rank, source, timeout, describe, what)
            return box.popleft()

    def matched(self, key, index, rank, dest, timeout, describe, what=lambda: "a send"):
        """Return once the send number ``index`` on ``key`` may complete (rendezvous: its
        receive is posted; buffered: at once)."""
        if not self.rendezvous:
            return
        with self.lock:
            self._wait(lambda: self.posted[key] > index, rank, dest, timeout, describe, what)

    def _wait(self, ready, rank, peer, timeout, describe, what):
        """Wait (holding ``lock``) until ``ready()``; raise on failure, timeout or deadlock.
        ``what()`` names the operation (built only for an error message)."""
        deadline = time.monotonic() + timeout
        while not ready():
            self._raise_if_failed(rank)
            if self.finished[peer]:
                raise CommError(f"rank {rank} waits in {what()}, but rank {peer} has already returned from "
                                f"its function: the ranks did not make the same sends/collectives")
            self.blocked[rank] = (ready, what)
            try:
                self._check_deadlock(rank)
                left = deadline - time.monotonic()
                if left <= 0:
                    raise CommTimeoutError(describe())
                self.lock.release()                  # sleep until _wake(rank), or the timeout
                paused = self.pause()                # another rank may run meanwhile
                try:
                    woken = self.parking[rank].acquire(True, left)
                finally:
                    if paused:
                        self.run()
                    self.lock.acquire()
                if woken:
                    self.signalled[rank] = False
            finally:
                self.blocked.pop(rank, None)

    def _check_deadlock(self, rank):
        if not self.rendezvous:          # buffered: a wait ends with the timeout, as it always did
            return
        running = [r for r in range(self.size) if not self.finished[r]]
        if all(r in self.blocked and not self.blocked[r][0]() for r in running):
            waits = "; ".join(f"rank {r} waits in {self.blocked[r][1]()}" for r in running)
            raise DeadlockError(f"deadlock (rendezvous sends): every rank waits for another — {waits}")

    def fail(self, rank, exc):
        with self.lock:
            if self.failed is None:
                self.failed = (rank, exc)
            self._wake_all()

    def finish(self, rank):
        with self.lock:
            self.finished[rank] = True
            self._wake_all()       # whoever waits for this rank learns it never will send

    def _wake(self, rank):
        """Wake ``rank`` if it waits (holding ``lock``); a rank that is running will see the
        change when it next looks."""
        if rank in self.blocked and not self.signalled[rank]:
            self.signalled[rank] = True
            self.parking[rank].release()

    def _wake_all(self):
        for rank in range(self.size):
            self._wake(rank)


class InProcessComm(Communicator):
    """A communicator whose ranks are threads; ``ctx`` names it inside the world."""

    backend = "inproc"

    def __init__(self, world, ctx, rank, world_ranks, device, log, timeout=60.0, debug=False):
        super().__init__(rank, len(world_ranks), device, log, world_ranks, timeout, debug)
        self._world, self._ctx = world, ctx
        self._splits = 0

    def _key(self, source, dest, wire_tag):
        return (self._ctx, self._world_ranks[source], self._world_ranks[dest], wire_tag)

    def _post_send(self, x, dest, wire_tag, header):
        # the mailbox keeps its own copy: the sender may overwrite x right after
        key = (self._ctx, self._me, self._world_ranks[dest], wire_tag)
        world = self._world
        index = world.put(key, (x.copy(), header), self._me)
        if not world.rendezvous:          # buffered: the send completes at once
            return None
        what = self._what("send to", dest, wire_tag, self._posted_in(), ", whose receive is not posted")
        # the send completes when its receive is posted
        return lambda: world.matched(key, index, self._me, key[2], self.timeout,
                                     lambda: self._describe_wait(dest, "have its send received by"), what)

    def _post_recv(self, source, wire_tag, out, first_in_line, on_header):
        key = (self._ctx, self._world_ranks[source], self._me, wire_tag)
        world = self._world
        if world.rendezvous:
            world.post(key)                   # posted now: a rendezvous send to it may complete
        c = self._coll
        posted = (c.op, c.algorithm, c.step) if c else None     # for a deadlock report only
        box = world.boxes[key]               # only this rank takes from it

        def finish():
            if box:                           # sent already: no lock, no waiting
                payload, header = box.popleft()
            else:
                payload, header = world.take(key, self._me, key[1], self.timeout,
                                             lambda: self._describe_wait(source, "receive from"),
                                             self._what("receive from", source, wire_tag, posted))
            on_header(header)
            if out is not None:
                if out.size != payload.size or out.dtype != payload.dtype:     # as the MPI backend
                    raise ValueError(f"recv into a {out.dtype} buffer of {out.size} elements but rank "
                                     f"{key[1]} sent {payload.dtype} of shape {payload.shape}")
                if out.shape == payload.shape:    # the rings' case: a third of the cost of reshaping
                    out[...] = payload
                else:                             # into out's own layout (a reshape of a strided out copies)
                    out[...] = payload.reshape(out.shape)
                payload = out
            return payload, header

        return finish

    def _posted_in(self):
        """The collective and step an operation is posted in (None: a plain send/recv)."""
        c = self._coll
        return (c.op, c.algorithm, c.step) if c else None

    def _what(self, verb, peer, wire_tag, posted, suffix=""):
        """``() -> str``: the operation, as a deadlock report names it: peer, tag, collective and
        the step it was posted in (the text is built only when a report needs it)."""
        peer = self._world_ranks[peer]

        def what():
            where = f"{posted[0]}(algorithm={posted[1]!r}) step {posted[2]}" if posted else \
                f"a plain send/recv, tag {wire_tag}"
            return f"{verb} rank {peer} ({where}){suffix}"
        return what

    def _send_object(self, obj, dest):
        self._world.put(self._key(self.rank, dest, CTRL_TAG), obj, self.world_rank())
        return lambda: None

    def _recv_object(self, source):
        return self._world.take(self._key(source, self.rank, CTRL_TAG), self.world_rank(),
                                self.world_rank(source), self.timeout,
                                lambda: self._describe_wait(source, "exchange control data with"),
                                lambda: f"an exchange of control data with rank {self.world_rank(source)}")

    def _make_split(self, color, members):
        self._splits += 1    # every rank of this comm splits in the same order: same counter
        if color is None:
            return None
        ctx = self._ctx + ((self._splits, color),)
        return InProcessComm(self._world, ctx, members.index(self.rank),
                             [self._world_ranks[m] for m in members], self.device, self.log,
                             self.timeout, self.debug)


def spawn(fn, world_size: int = 4, *args, device=DEFAULT_DEVICE, timeout: float = 60.0,
          debug: bool = False, rendezvous: bool | None = None, **kwargs) -> list:
    """Run ``fn(comm, *args, **kwargs)`` on ``world_size`` thread ranks; results in rank order.

    ``device``: a preset name, dict or DeviceSpec used for every rank's Device.
    ``timeout``: seconds a blocking receive may wait before raising CommTimeoutError.
    ``debug``: check at every collective that all ranks called the same one.
    ``rendezvous``: a send completes only once its receive is posted (see the module
    docstring); None: ``MINIDIST_P2P=rendezvous`` in the environment, else buffered.
    """
    if world_size < 1:
        raise ValueError(f"world_size must be >= 1, got {world_size}")
    if rendezvous is None:
        mode = os.environ.get("MINIDIST_P2P", "buffered")
        if mode not in ("buffered", "rendezvous"):
            raise ValueError(f"MINIDIST_P2P={mode!r}: give 'buffered' (a send completes at once, the default) or "
                             f"'rendezvous' (a send completes when its receive is posted)")
        rendezvous = mode == "rendezvous"
    world = _World(world_size, rendezvous)
    comms = [InProcessComm(world, ("world",), r, range(world_size), Device(device, rank=r),
                           MessageLog(), timeout, debug) for r in range(world_size)]
    results: list = [None] * world_size
    errors: list = [None] * world_size

    def main(r):
        _RUNNING.world = world
        world.run()
        try:
            with comms[r].device:
                results[r] = fn(comms[r], *args, **kwargs)
        except BaseException as exc:   # noqa: BLE001 - re-raised by spawn below
            errors[r] = exc
            world.fail(r, exc)
        finally:
            world.pause()
            _RUNNING.world = None
            world.finish(r)

    threads = [threading.Thread(target=main, args=(r,), name=f"minidist-rank-{r}", daemon=True)
               for r in range(world_size)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if world.failed is not None:
        r, exc = world.failed
        raise with_rank(exc, r, world_size)
    problem = undelivered(world.boxes, COLL_TAG, CTRL_TAG)
    if problem is not None:
        raise CollectiveMismatchError(problem)
    return results


@contextlib.contextmanager
def let_others_run():
    """Inside, the calling rank thread does not hold the run token: wrap a wait for anything
    other than a message (another thread of this rank, a ``threading.Barrier``) so the other
    ranks run meanwhile. Outside a rank thread of :func:`spawn`, it does nothing."""
    world = getattr(_RUNNING, "world", None)
    paused = world is not None and world.pause()
    try:
        yield
    finally:
        if paused:
            world.run()


def single_rank_comm(device=None, timeout: float = 60.0, debug: bool = False) -> InProcessComm:
    """A world of one rank (no threads): what a program gets when not launched by mpirun."""
    return InProcessComm(_World(1), ("world",), 0, [0], Device(device, rank=0), MessageLog(), timeout, debug)

