"""A collective's message pattern as plain data: who sends how many bytes to whom, per step.

``message_pattern("all_reduce", "ring", p=4)`` runs the algorithm once on ``p`` in-process
ranks with a small array and returns every message sent, ordered by step — the table a
student draws on the whiteboard, and what tests compare with the textbook::

    for m in message_pattern("broadcast", "binomial", p=8):
        print(m)        # Message(step=0, phase='', src=0, dst=4, nbytes=...)
"""
from __future__ import annotations

import dataclasses

import numpy as np

from .collectives import COLLECTIVES
from .inproc import spawn


@dataclasses.dataclass(frozen=True)
class Message:
    step: int
    phase: str
    src: int
    dst: int
    nbytes: int


def _call(comm, op, algorithm, n_elems, root):
    p, x = comm.size, np.ones(n_elems, dtype=np.float32)
    if op == "all_gather":
        return COLLECTIVES[op](comm, x[: n_elems // p], algorithm=algorithm)
    if op == "gather":
        return COLLECTIVES[op](comm, x[: n_elems // p], root=root, algorithm=algorithm)
    if op == "scatter":
        return COLLECTIVES[op](comm, x.reshape(p, -1) if comm.rank == root else None, root=root,
                               algorithm=algorithm)
    if op == "all_to_all":
        return COLLECTIVES[op](comm, x.reshape(p, -1), algorithm=algorithm)
    if op == "barrier":
        return COLLECTIVES[op](comm, algorithm=algorithm)
    if op in ("broadcast", "reduce"):
        return COLLECTIVES[op](comm, x, root=root, algorithm=algorithm)
    return COLLECTIVES[op](comm, x, algorithm=algorithm)


def message_pattern(op: str, algorithm: str, p: int, n_elems: int | None = None, root: int = 0) -> list[Message]:
    """Every message of one ``op``/``algorithm`` call on ``p`` ranks (float32, ``n_elems``
    elements in total, default ``4·p``), sorted by (simulated send time, sender)."""
    n_elems = 4 * p if n_elems is None else n_elems

    def run(comm):
        _call(comm, op, algorithm, n_elems, root)
        return [(e.t_start, e.rank, Message(e.step, e.phase, e.rank, e.peer, e.nbytes))
                for e in comm.log.messages(op)]

    sent = [m for rank_msgs in spawn(run, p, timeout=10) for m in rank_msgs]
    return [m for _, _, m in sorted(sent, key=lambda t: (t[0], t[1]))]
