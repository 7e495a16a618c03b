"""The table of every collective and its algorithms: ``dist.algorithms("all_reduce")``.

Each collective lives in its own module (``all_reduce.py``: ring, recursive doubling,
Rabenseifner, reduce+broadcast, tree; …) with an ``ALGORITHMS`` dict of its own; this module
gathers them, so that the package, the message-pattern tables and the MPI header codes all
read one list.
"""
from __future__ import annotations

from .all_gather import ALGORITHMS as _ALL_GATHER
from .all_gather import all_gather
from .all_reduce import ALGORITHMS as _ALL_REDUCE
from .all_reduce import all_reduce
from .all_to_all import ALGORITHMS as _ALL_TO_ALL
from .all_to_all import BARRIER_ALGORITHMS as _BARRIER
from .all_to_all import all_to_all, barrier
from .broadcast import ALGORITHMS as _BROADCAST
from .broadcast import broadcast
from .reduce import ALGORITHMS as _REDUCE
from .reduce import reduce
from .reduce_scatter import ALGORITHMS as _REDUCE_SCATTER
from .reduce_scatter import reduce_scatter
from .scatter_gather import GATHER_ALGORITHMS as _GATHER
from .scatter_gather import SCATTER_ALGORITHMS as _SCATTER
from .scatter_gather import gather, scatter

ALGORITHMS = {
    "broadcast": _BROADCAST, "reduce": _REDUCE, "all_reduce": _ALL_REDUCE, "reduce_scatter": _REDUCE_SCATTER,
    "all_gather": _ALL_GATHER, "scatter": _SCATTER, "gather": _GATHER, "all_to_all": _ALL_TO_ALL, "barrier": _BARRIER,
}
COLLECTIVES = {"broadcast": broadcast, "reduce": reduce, "all_reduce": all_reduce, "reduce_scatter": reduce_scatter,
               "all_gather": all_gather, "scatter": scatter, "gather": gather, "all_to_all": all_to_all,
               "barrier": barrier}


def algorithms(name: str) -> list[str]:
    """Names of the algorithms of collective ``name``, e.g. ``algorithms("all_reduce")``."""
    if name not in ALGORITHMS:
        raise ValueError(f"unknown collective {name!r}; choose one of {sorted(ALGORITHMS)}")
    return sorted(ALGORITHMS[name])
