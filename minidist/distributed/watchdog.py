"""Name the rank that died without a word (SIGKILL, the kernel's OOM killer) under mpirun.

A rank that raises prints its own ``[minidist] rank R of N failed: …`` (see ``mpi.abort_job``).
A rank that is *killed* cannot: MPICH's mpirun only reports "PID 12345 … signal 9" and
kills the other ranks at once. So, under mpirun, each rank forks a tiny watcher process
that holds the read end of a pipe from its rank:

* the rank ends normally (or aborts after printing its error): it first writes ``bye``
  into the pipe, and the watcher leaves without a word;
* the rank is killed: the kernel closes the pipe, the watcher reads end-of-file without
  ``bye`` and prints ``[minidist] rank R of N (pid P) ended without a word …``.

When mpirun then kills the other ranks, their watchers see the same end-of-file. A watcher
that wakes while every other rank of its node is still alive knows its rank died first and
says so. One that finds another rank already dead keeps quiet for a moment; if no watcher has
spoken by then (on a busy machine the first rank's watcher may wake last), one line lists
every rank that ended, with its pid, to match against the PID mpirun reports — a line that
can be vague but never names the wrong rank. One marker file per job (``O_EXCL``, named after
the ranks' common parent, MPICH's per-node proxy) lets only one watcher speak. The rank that
aborts on an error claims the marker first, so a job that fails with a message prints no
watcher line at all.

The watcher calls no MPI and no Python exit handler (``os._exit``): it is safe to fork
before or after ``MPI_Init``. One per process, which under mpirun is one per rank.
"""
from __future__ import annotations

import atexit
import os
import tempfile
import time

_pipe_w: int | None = None      # this process's write end (one rank per process under mpirun)
_marker: str | None = None      # the job's marker file, named in the rank (a watcher's parent changes)
# how long the reporting watcher keeps the marker: mpirun may take a while to kill the other ranks on a
# busy machine, and their watchers must still find it (the watcher holds no pipe meanwhile)
LINGER_S = 60.0
SETTLE_S = 0.3       # how long a watcher that is not sure to be first lets the first one speak


def claim() -> bool:
    """Be the one rank (or watcher) that reports this job's failure; False if another was first."""
    if _marker is None:
        return True
    try:
        os.close(os.open(_marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
        return True
    except OSError:
        return False


def say_goodbye(aborting: bool = False) -> None:
    """Tell the watcher that this rank ends knowingly: a normal exit, or (``aborting``) after
    printing its error and claiming the job's marker, which the watcher then cleans up."""
    global _pipe_w
    if _pipe_w is not None:
        try:
            os.write(_pipe_w, b"bye-abort" if aborting else b"bye")
            os.close(_pipe_w)
        except OSError:
            pass
        _pipe_w = None


def _alive(pid: int) -> bool:
    """Whether ``pid`` still runs (a zombie, dead but not yet reaped by its parent, does not)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except (OSError, IndexError):
        return False


def _report(rank: int, size: int, peers: dict) -> str | None:
    """The line a watcher prints when its rank ended without a goodbye, or None to keep quiet."""
    others_dead = [r for r, pid in peers.items() if r != rank and not _alive(pid)]
    if not others_dead:
        if claim():
            return (f"[minidist] rank {rank} of {size} (pid {peers[rank]}) ended without a word: killed by a "
                    f"signal (SIGKILL, or the kernel's out-of-memory killer); mpirun stops the other ranks\n")
        return None
    time.sleep(SETTLE_S)                                 # let a watcher that knows it was first speak
    if not claim():
        return None
    dead = sorted([rank] + others_dead)
    listed = ", ".join(f"{r} (pid {peers[r]})" for r in dead)
    return (f"[minidist] ranks {listed} of {size} ended without a word (killed by a signal); the first of them "
            f"is the PID mpirun reports, mpirun killed the others\n")


def _remove(path: str) -> None:
    try:
        os.remove(path)
    except OSError:
        pass


def start(rank: int, size: int, peers: dict | None = None) -> None:
    """Fork this rank's watcher (once per process). ``peers``: world rank -> pid of the ranks on
    this node (this rank's included)."""
    global _pipe_w, _marker
    if _pipe_w is not None:
        return
    r, w = os.pipe()
    peers = dict(peers or {rank: os.getpid()})
    # the ranks' common parent is MPICH's proxy on this node: one marker per job and node
    marker = _marker = os.path.join(tempfile.gettempdir(), f"minidist-job-{os.getppid()}.died")
    if os.fork() == 0:                                   # the watcher
        os.close(w)
        # keep only the pipe and stderr: mpirun (and MPICH's proxy, through the PMI socket) wait
        # for every descriptor its ranks hold to close
        os.close(1)
        os.closerange(3, r)
        os.closerange(r + 1, os.sysconf("SC_OPEN_MAX"))
        os.setsid()                                      # out of the rank's process group, which mpirun kills
        heard = b""
        while chunk := os.read(r, 16):
            heard += chunk
        line = _report(rank, size, peers) if b"bye" not in heard else None
        if line is not None:
            os.write(2, line.encode())
            os.close(2)
            time.sleep(LINGER_S)                         # the other watchers look for the marker first
            _remove(marker)
        elif b"bye-abort" in heard:                      # my rank claimed the marker: clean it up later
            os.close(2)
            time.sleep(LINGER_S)
            _remove(marker)
        os._exit(0)
    os.close(r)
    _pipe_w = w
    atexit.register(say_goodbye)
