"""minidist.distributed: ranks, point-to-point messages, and every collective built on them.

Imported as ``dist``, like torch.distributed: ``from minidist import distributed as dist``.

Two backends share one interface (:class:`~minidist.distributed.comm.Communicator`):

* in-process — ``dist.spawn(fn, world_size=4)`` runs ``fn(comm)`` on 4 thread ranks;
* MPI — under ``mpirun -n 4 python prog.py``, ``dist.init()`` returns the world
  communicator over mpi4py (imported only then) and ``dist.run_main(fn)`` runs ``fn(comm)``
  and brings the whole job down if any rank raises.

Collectives are plain functions of a communicator (torch.distributed names)::

    dist.broadcast(comm, x, root=0, algorithm="binomial")
    dist.reduce(comm, x, root=0, op="sum", algorithm="binomial")
    dist.all_reduce(comm, x, op="sum", algorithm="ring")
    dist.reduce_scatter(comm, x, op="sum", algorithm="ring")   # my chunk of ceil(n/p)
    dist.all_gather(comm, chunk, algorithm="ring")             # flattened, rank order
    dist.scatter(comm, chunks, root=0); dist.gather(comm, x, root=0)   # (p, ...) blocks
    dist.all_to_all(comm, chunks); dist.barrier(comm)
    dist.algorithms("all_reduce")     # ['rabenseifner', 'recursive_doubling', ...]
    dist.message_pattern("all_reduce", "ring", p=4)   # who sends what to whom, as data

Every collective also takes ``async_op``, ``stream``, ``wire_dtype``/``bytes_per_element``
and ``tag``; its messages are in ``comm.log`` and its analytic α-β cost in :mod:`.cost`.
"""
from __future__ import annotations

import os
import socket

from .all_gather import all_gather
from .all_reduce import all_reduce
from .all_to_all import all_to_all, barrier
from .broadcast import broadcast
from .collectives import ALGORITHMS, COLLECTIVES, algorithms
from .call import Work
from .comm import Communicator, Request
from .errors import (
    CollectiveMismatchError,
    CommError,
    CommTimeoutError,
    DeadlockError,
    PeerFailedError,
)
from .inproc import InProcessComm, let_others_run, single_rank_comm, spawn
from .log import CollectiveRecord, MessageEntry, MessageLog
from .objects import gather_object
from .ops import REDUCE_OPS
from .pattern import Message, message_pattern
from .reduce import reduce
from .reduce_scatter import reduce_scatter
from .scatter_gather import gather, scatter
from . import watchdog

OPS = tuple(REDUCE_OPS)


_LAUNCH_VARS = ("PMI_RANK", "PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "OMPI_COMM_WORLD_RANK",
                "PMIX_RANK", "MPI_LOCALNRANKS")


def is_mpi_launch() -> bool:
    """True when this process was started by mpirun/mpiexec (checked without importing MPI)."""
    return any(v in os.environ for v in _LAUNCH_VARS)


def launch_rank() -> int:
    """This process's rank as mpirun set it in the environment (0 when not under mpirun), read
    before MPI starts: so that one rank, not every one, prints a message about the input."""
    for var in ("PMI_RANK", "OMPI_COMM_WORLD_RANK", "PMIX_RANK"):
        if os.environ.get(var, "").isdigit():
            return int(os.environ[var])
    return 0


def init(device=None, timeout: float = 60.0, debug: bool = False):
    """The MPI world communicator when launched under mpirun, else ``None``.

    Under mpirun it also installs an exception hook: an exception that nothing catches, on
    any thread of any rank, prints that rank's number and message and aborts the whole job
    (``MPI.COMM_WORLD.Abort``) — otherwise the other ranks would wait out their timeout."""
    if not is_mpi_launch():
        return None
    from .mpi import MPIComm, abort_on_uncaught  # here, not at the top: importing mpi4py initialises MPI

    comm = MPIComm.world(device=device, timeout=timeout, debug=debug)
    # so that a rank killed without a word is still named: its watcher knows the node's other ranks
    where = comm.exchange_objects((socket.gethostname(), os.getpid()))
    here = where[comm.rank][0]
    watchdog.start(comm.rank, comm.size, {r: pid for r, (host, pid) in enumerate(where) if host == here})
    abort_on_uncaught(comm)
    return comm


def run_main(fn, *args, device=None, timeout: float = 60.0, debug: bool = False, **kwargs):
    """Run ``fn(comm, *args, **kwargs)`` as the program's main, on every rank.

    Under mpirun: on the MPI world; if a rank raises, its error is printed to stderr with
    its rank and the whole job is aborted (``MPI.COMM_WORLD.Abort(1)``) — never a hang.
    Without mpirun: on a world of one in-process rank.
    """
    comm = init(device=device, timeout=timeout, debug=debug)
    if comm is None:
        comm = single_rank_comm(device, timeout, debug)
        with comm.device:
            return fn(comm, *args, **kwargs)
    try:
        with comm.device:
            return fn(comm, *args, **kwargs)
    except BaseException as exc:
        if isinstance(exc, SystemExit) and not exc.code:
            raise
        from .mpi import abort_job  # already imported by init(); named here to reach Abort

        abort_job(comm, exc)


__all__ = [
    "ALGORITHMS",
    "COLLECTIVES",
    "OPS",
    "CollectiveMismatchError",
    "CollectiveRecord",
    "CommError",
    "CommTimeoutError",
    "DeadlockError",
    "Communicator",
    "InProcessComm",
    "MessageEntry",
    "Message",
    "MessageLog",
    "PeerFailedError",
    "Request",
    "Work",
    "algorithms",
    "all_gather",
    "all_reduce",
    "all_to_all",
    "barrier",
    "broadcast",
    "gather_object",
    "gather",
    "init",
    "is_mpi_launch",
    "let_others_run",
    "message_pattern",
    "reduce",
    "reduce_scatter",
    "run_main",
    "scatter",
    "single_rank_comm",
    "spawn",
]
