"""What goes wrong between ranks, as exceptions that say which ranks and why."""
from __future__ import annotations


class CommError(RuntimeError):
    """Base class of minidist.distributed communication errors."""


class CommTimeoutError(CommError, TimeoutError):
    """A blocking send/recv waited longer than the communicator's ``timeout``.

    Usually a deadlock or a rank that skipped a collective; the message names the rank
    that waited, the peer it waited for and the collective/step it was in.
    """


class CollectiveMismatchError(CommError):
    """Ranks entered different collectives (or the same one with different shapes)."""


class PeerFailedError(CommError):
    """Another rank raised, so this rank was woken from its wait and stopped."""


class DeadlockError(CommError):
    """Every running rank waits for another (a receive whose message never comes, or a
    rendezvous send whose receive is never posted); the message lists each rank's wait."""
