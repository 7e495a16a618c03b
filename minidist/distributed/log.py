"""The message log of one rank: every message it sent or received, and every collective.

Each rank owns one :class:`MessageLog` (sub-communicators made by ``comm.split`` write into
their parent's log, naming peers by *world* rank). A student reads it to check the
textbook: ring all-reduce sends ``2·(p−1)/p·n`` bytes per rank, a binomial broadcast
delivers ``n`` bytes to every non-root rank, and so on::

    comm.log.summary()            # {"all_reduce": {"bytes_sent": …, "bytes_received": …, "messages": …}}
    m = comm.log.mark(); dist.all_reduce(comm, g); comm.log.since(m).bytes_sent()

Times are the rank's *simulated* comm-stream times in seconds (see :mod:`minidist.device`).
"""
from __future__ import annotations

import dataclasses
import sys

# one entry per message and side (64 ranks log ~70,000 a ZeRO-3 step): without a __dict__ each
# is half the size (120 bytes, not 216) and quicker to make; dataclass slots need Python 3.10
_SLOTS = {"slots": True} if sys.version_info >= (3, 10) else {}


@dataclasses.dataclass(**_SLOTS)
class MessageEntry:
    """One message as seen by one rank.

    For a send, ``t_start`` is when it left this rank's comm stream and ``t_end`` when it
    arrives at the peer (``t_start + α + nbytes/β``). For a receive, ``t_start`` is when the
    peer started sending and ``t_end`` when the receive completed on this rank
    (``max(own comm time, arrival)``).
    """

    rank: int           # world rank that logged the entry
    op: str             # collective name ("all_reduce", …) or "send"/"recv" for plain p2p
    algorithm: str      # "ring", "binomial", … or "p2p"
    step: int           # step of the algorithm (0, 1, …)
    phase: str          # part of a composed algorithm ("reduce_scatter", "fold", …) or ""
    direction: str      # "send" | "recv"
    peer: int           # world rank of the other side
    nbytes: int         # bytes on the wire (emulated size when wire_dtype is given)
    t_start: float
    t_end: float
    tag: int = 0


@dataclasses.dataclass
class CollectiveRecord:
    """One collective call on one rank: its simulated span and traffic."""

    rank: int
    op: str
    algorithm: str
    group: tuple        # world ranks of the communicator it ran on
    t_start: float
    t_end: float
    bytes_sent: int
    bytes_received: int
    messages: int

    @property
    def duration(self) -> float:
        return self.t_end - self.t_start


class MessageLog:
    """Append-only list of :class:`MessageEntry` and :class:`CollectiveRecord` of one rank."""

    def __init__(self, entries=None, collectives=None):
        self.entries: list[MessageEntry] = list(entries or [])
        self.collectives: list[CollectiveRecord] = list(collectives or [])

    def add(self, entry: MessageEntry) -> None:
        self.entries.append(entry)

    def __len__(self) -> int:
        return len(self.entries)

    def __iter__(self):
        return iter(self.entries)

    # -- measuring one step ---------------------------------------------------------------
    def mark(self) -> tuple[int, int]:
        """A position in the log; ``since(mark)`` returns what was logged after it."""
        return len(self.entries), len(self.collectives)

    def rollback(self, mark: tuple[int, int]) -> None:
        """Forget what was logged after ``mark`` (:meth:`minidist.device.Device.rolled_back`)."""
        del self.entries[mark[0]:]
        del self.collectives[mark[1]:]

    def since(self, mark: tuple[int, int]) -> MessageLog:
        return MessageLog(self.entries[mark[0]:], self.collectives[mark[1]:])

    def traffic_since(self, mark: tuple[int, int]) -> tuple[int, int, int]:
        """``(bytes sent, bytes received, messages sent)`` logged after ``mark``, in one pass
        (each collective call totals its own messages: this is on every call's path)."""
        sent = received = messages = 0
        for e in self.entries[mark[0]:]:
            if e.direction == "send":
                sent += e.nbytes
                messages += 1
            else:
                received += e.nbytes
        return sent, received, messages

    def clear(self) -> None:
        self.entries.clear()
        self.collectives.clear()

    # -- totals ---------------------------------------------------------------------------
    def _select(self, direction: str, op: str | None):
        return [e for e in self.entries if e.direction == direction and (op is None or e.op == op)]

    def bytes_sent(self, op: str | None = None) -> int:
        return sum(e.nbytes for e in self._select("send", op))

    def bytes_received(self, op: str | None = None) -> int:
        return sum(e.nbytes for e in self._select("recv", op))

    def messages(self, op: str | None = None, direction: str = "send") -> list[MessageEntry]:
        return self._select(direction, op)

    def summary(self) -> dict[str, dict[str, int]]:
        """Per op: ``bytes_sent``, ``bytes_received`` and ``messages`` (messages sent)."""
        out: dict[str, dict[str, int]] = {}
        for e in self.entries:
            row = out.setdefault(e.op, {"bytes_sent": 0, "bytes_received": 0, "messages": 0})
            if e.direction == "send":
                row["bytes_sent"] += e.nbytes
                row["messages"] += 1
            else:
                row["bytes_received"] += e.nbytes
        return out

    def to_records(self) -> list[dict]:
        """Entries as plain dicts (JSON-friendly), e.g. to compare two backends."""
        return [dataclasses.asdict(e) for e in self.entries]

    def table(self, limit: int | None = None) -> str:
        """The log as a fixed-width text table, one message per line."""
        head = (f"{'rank':>4} {'op':<14} {'algorithm':<18} {'phase':<15} {'step':>4} {'dir':<4} "
                f"{'peer':>4} {'bytes':>10} {'t_start(us)':>11} {'t_end(us)':>10}")
        rows = [head]
        for e in self.entries[:limit]:
            rows.append(f"{e.rank:>4} {e.op:<14} {e.algorithm:<18} {e.phase:<15} {e.step:>4} "
                        f"{e.direction:<4} {e.peer:>4} {e.nbytes:>10} {e.t_start * 1e6:>11.2f} "
                        f"{e.t_end * 1e6:>10.2f}")
        return "\n".join(rows)
