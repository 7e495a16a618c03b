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


def with_rank(exc: BaseException, rank: int, size: int) -> BaseException:
    """Prefix the exception's message with the rank that raised it (keeps its type)."""
    prefix = f"[rank {rank} of {size}] "
    if isinstance(exc, OSError) and exc.strerror is not None:
        exc.strerror = prefix + exc.strerror      # str(OSError) reads errno, strerror, filename: not args
    elif exc.args and isinstance(exc.args[0], str):
        exc.args = (prefix + exc.args[0],) + exc.args[1:]
    else:
        exc.args = (prefix + " ".join(map(str, exc.args)),)
    if prefix.strip() not in str(exc):           # an exception whose str() ignores its args
        exc.add_note(prefix.strip())
    exc.rank = rank
    return exc


def undelivered(boxes: dict, coll_tag: int, ctrl_tag: int) -> str | None:
    """What the in-process mailboxes (``(ctx, source, dest, wire tag) -> deque``) still hold once
    every rank has returned: a collective's messages (wire tags from ``coll_tag``, the control
    channel's ``ctrl_tag`` aside) that no receive took — a rank skipped or repeated a collective,
    or gave it another root — or None. A plain send nobody received is the program's own
    affair, as in MPI."""
    left = [(key, box) for key, box in boxes.items() if key[3] >= coll_tag and key[3] != ctrl_tag and box]
    if not left:
        return None
    lines = []
    for (_ctx, src, dst, _tag), box in sorted(left, key=lambda kb: (kb[0][1], kb[0][2]))[:4]:
        header = box[0][1] if isinstance(box[0], tuple) and len(box[0]) == 2 else None
        what = (f"{header.op}(algorithm={header.algorithm!r}) step {header.step}"
                if hasattr(header, "op") else "a message")
        lines.append(f"rank {src} sent {len(box)} message(s) to rank {dst} that it never received, the first "
                     f"of {what}")
    return ("; ".join(lines) + ": a rank skipped or repeated a collective, or called it with another root "
            "(every rank must make the same collective calls); rerun with debug=True to compare every call")
