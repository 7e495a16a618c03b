"""The in-process backend: N ranks as N threads of one Python process.

``spawn(fn, world_size=4)`` starts one thread per rank, gives each its own
:class:`~minidist.device.Device` (activated in that thread with ``with comm.device:``)
and its own message log, and runs ``fn(comm, *args, **kwargs)`` on every rank::

    from minidist import distributed as dist
    def main(comm):
        return dist.all_reduce(comm, np.full(4, comm.rank + 1.0))
    dist.spawn(main, world_size=4)      # -> [array([10., 10., 10., 10.]), ...]

Messages travel through mailboxes, one FIFO per (communicator, source, destination, tag).
A send copies the array into the mailbox and returns at once (like MPI's *eager*
protocol), a receive waits for its mailbox — until the timeout, or until another rank
fails, whichever comes first. The first exception on any rank wakes every other rank
(:class:`PeerFailedError`) and is re-raised by ``spawn`` with its rank in the message.
"""
from __future__ import annotations

import collections
import threading
import time

from ..defaults import DEFAULT_DEVICE
from ..device import Device
from .comm import CTRL_TAG, Communicator
from .errors import CommError, CommTimeoutError, PeerFailedError
from .log import MessageLog


class _World:
    """Mailboxes shared by the threads of one ``spawn``, and who has failed or finished."""

    def __init__(self, size: int):
        self.size = size
        self.cond = threading.Condition()
        self.boxes: dict[tuple, collections.deque] = collections.defaultdict(collections.deque)
        self.failed: tuple[int, BaseException] | None = None
        self.finished = [False] * size

    def _raise_if_failed(self, rank):
        if self.failed is not None:
            r, exc = self.failed
            raise PeerFailedError(f"rank {rank} stopped because rank {r} failed with "
                                  f"{type(exc).__name__}: {exc}")

    def put(self, key, item, rank):
        with self.cond:
            self._raise_if_failed(rank)
            self.boxes[key].append(item)
            self.cond.notify_all()

    def take(self, key, rank, source, timeout, describe):
        deadline = time.monotonic() + timeout
        with self.cond:
            while True:
                box = self.boxes.get(key)
                if box:
                    return box.popleft()
                self._raise_if_failed(rank)
                if self.finished[source]:
                    raise CommError(f"rank {rank} waits for a message from rank {source}, but rank "
                                    f"{source} has already returned from its function: the ranks "
                                    f"did not make the same sends/collectives")
                left = deadline - time.monotonic()
                if left <= 0:
                    raise CommTimeoutError(describe())
                self.cond.wait(left)

    def fail(self, rank, exc):
        with self.cond:
            if self.failed is None:
                self.failed = (rank, exc)
            self.cond.notify_all()

    def finish(self, rank):
        with self.cond:
            self.finished[rank] = True
            self.cond.notify_all()


class InProcessComm(Communicator):
    """A communicator whose ranks are threads; ``ctx`` names it inside the world."""

    backend = "inproc"

    def __init__(self, world, ctx, rank, world_ranks, device, log, timeout=60.0, debug=False):
        super().__init__(rank, len(world_ranks), device, log, world_ranks, timeout, debug)
        self._world, self._ctx = world, ctx
        self._splits = 0

    def _key(self, source, dest, wire_tag):
        return (self._ctx, self.world_rank(source), self.world_rank(dest), wire_tag)

    def _post_send(self, x, dest, wire_tag, header):
        # the mailbox keeps its own copy: the sender may overwrite x right after (buffered send)
        self._world.put(self._key(self.rank, dest, wire_tag), (x.copy(), header), self.world_rank())
        return lambda: None

    def _post_recv(self, source, wire_tag, out, first_in_line, on_header):
        key = self._key(source, self.rank, wire_tag)

        def finish():
            payload, header = self._world.take(key, self.world_rank(), self.world_rank(source),
                                               self.timeout, lambda: self._describe_wait(source, "receive from"))
            on_header(header)
            if out is not None:
                if out.size != payload.size:
                    raise ValueError(f"recv into a buffer of {out.size} elements but rank "
                                     f"{self.world_rank(source)} sent {payload.size}")
                out.reshape(-1)[...] = payload.reshape(-1)
                payload = out
            return payload, header

        return finish

    def _send_object(self, obj, dest):
        self._world.put(self._key(self.rank, dest, CTRL_TAG), obj, self.world_rank())
        return lambda: None

    def _recv_object(self, source):
        return self._world.take(self._key(source, self.rank, CTRL_TAG), self.world_rank(),
                                self.world_rank(source), self.timeout,
                                lambda: self._describe_wait(source, "exchange control data with"))

    def _make_split(self, color, members):
        self._splits += 1    # every rank of this comm splits in the same order: same counter
        if color is None:
            return None
        ctx = self._ctx + ((self._splits, color),)
        return InProcessComm(self._world, ctx, members.index(self.rank),
                             [self._world_ranks[m] for m in members], self.device, self.log,
                             self.timeout, self.debug)


def _with_rank(exc: BaseException, rank: int, size: int) -> BaseException:
    """Prefix the exception's message with the rank that raised it (keeps its type)."""
    prefix = f"[rank {rank} of {size}] "
    if exc.args and isinstance(exc.args[0], str):
        exc.args = (prefix + exc.args[0],) + exc.args[1:]
    else:
        exc.args = (prefix + " ".join(map(str, exc.args)),)
    exc.rank = rank
    return exc


def spawn(fn, world_size: int = 4, *args, device=DEFAULT_DEVICE, timeout: float = 60.0,
          debug: bool = False, **kwargs) -> list:
    """Run ``fn(comm, *args, **kwargs)`` on ``world_size`` thread ranks; results in rank order.

    ``device``: a preset name, dict or DeviceSpec used for every rank's Device.
    ``timeout``: seconds a blocking receive may wait before raising CommTimeoutError.
    ``debug``: check at every collective that all ranks called the same one.
    """
    if world_size < 1:
        raise ValueError(f"world_size must be >= 1, got {world_size}")
    world = _World(world_size)
    comms = [InProcessComm(world, ("world",), r, range(world_size), Device(device, rank=r),
                           MessageLog(), timeout, debug) for r in range(world_size)]
    results: list = [None] * world_size
    errors: list = [None] * world_size

    def main(r):
        try:
            with comms[r].device:
                results[r] = fn(comms[r], *args, **kwargs)
        except BaseException as exc:   # noqa: BLE001 - re-raised by spawn below
            errors[r] = exc
            world.fail(r, exc)
        finally:
            world.finish(r)

    threads = [threading.Thread(target=main, args=(r,), name=f"minidist-rank-{r}", daemon=True)
               for r in range(world_size)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if world.failed is not None:
        r, exc = world.failed
        raise _with_rank(exc, r, world_size)
    return results


def single_rank_comm(device=None, timeout: float = 60.0, debug: bool = False) -> InProcessComm:
    """A world of one rank (no threads): what a program gets when not launched by mpirun."""
    return InProcessComm(_World(1), ("world",), 0, [0], Device(device, rank=0), MessageLog(), timeout, debug)

