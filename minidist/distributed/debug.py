"""Debug mode: before every collective, all ranks check they are calling the same one.

The classic distributed bug is a rank that takes a different branch — it calls
``all_gather`` while the others call ``all_reduce``, or passes a differently shaped
gradient. Real NCCL then hangs or silently mixes data. With ``debug=True`` (``spawn`` or
``init``) every collective first exchanges a small *signature* — collective, algorithm,
shape, dtype, root, op — with every other rank (control messages: not logged, not timed)
and, if they differ, every rank raises :class:`CollectiveMismatchError` saying which
ranks diverged and how. It costs ``p−1`` extra messages per collective, so it is off by
default (PyTorch's ``TORCH_DISTRIBUTED_DEBUG=DETAIL`` makes the same trade).
"""
from __future__ import annotations

import collections

import numpy as np

from .errors import CollectiveMismatchError


def signature(op, algorithm, x, root, reduce_op) -> tuple:
    shape = None if x is None else tuple(np.shape(x))
    dtype = None if x is None else str(np.asarray(x).dtype)
    return (op, algorithm, shape, dtype, root, reduce_op)


def describe(sig: tuple) -> str:
    op, algorithm, shape, dtype, root, reduce_op = sig
    return (f"{op}(algorithm={algorithm!r}, shape={shape}, dtype={dtype}"
            + (f", root={root}" if root is not None else "")
            + (f", op={reduce_op!r}" if reduce_op is not None else "") + ")")


def check_same_collective(comm, op, algorithm, x, root, reduce_op) -> None:
    """Raise on every rank if the ranks of ``comm`` are not all entering the same collective."""
    mine = signature(op, algorithm, x, root, reduce_op)
    sigs = comm._exchange_objects(mine)          # every rank's signature, in rank order
    if all(s == mine for s in sigs):
        return
    ranks_of = collections.defaultdict(list)
    for r, s in enumerate(sigs):
        ranks_of[s].append(comm.world_rank(r))
    common = max(ranks_of, key=lambda s: len(ranks_of[s]))    # what most ranks called
    lines = [f"world rank(s) {ranks_of[s]} called {describe(s)}" for s in ranks_of if s != common]
    raise CollectiveMismatchError(
        f"collective mismatch on the communicator of world ranks {list(comm.group)}: "
        + "; ".join(lines) + f"; but world rank(s) {ranks_of[common]} called {describe(common)}")
