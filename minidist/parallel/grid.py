"""The process grid: which ranks hold which slice of the model and of the batch.

The grid's dimensions are one ordered list, fastest-varying first, as Megatron-LM's
``RankGenerator`` orders them (``order="tp-cp-ep-dp-pp"``) and as torch's ``DeviceMesh``
names them::

    DIMENSIONS = ("tp", "cp", "ep", "dp", "pp")

* ``tp`` tensor parallel — the ranks that share one layer's weights (in a real cluster the
  neighbours inside one NVLink node, hence fastest);
* ``cp`` context parallel — the ranks that share one sequence, s/cp positions each
  (``parallel.context``, :mod:`minidist.parallel.context`); ``ep`` expert parallel — the
  ranks that share the experts of a mixture of experts, E/ep each (``parallel.expert``,
  :mod:`minidist.parallel.expert`; degree 1 without experts: a dimension of size 1 changes no rank);
* ``dp`` data parallel — the ranks that hold the same weights and see different data;
* ``pp`` pipeline parallel — the ranks that hold consecutive stages of one replica.

A rank's coordinates are its digits in that mixed radix; with cp = ep = 1 this is Megatron-LM's
``rank = tp_rank + tp · (dp_rank + dp · pp_rank)``::

    N = 8, tp = 2, pp = 2 (so dp = 2):
        pp 0:  dp 0 → ranks 0 1 (tp 0, 1)    dp 1 → ranks 2 3
        pp 1:  dp 0 → ranks 4 5              dp 1 → ranks 6 7

The data-parallel degree is what is left: ``dp = N / (tp · cp · ep · pp)``. Every group is a
sub-communicator made with :meth:`Communicator.split` (MPI_Comm_split) — ranks that agree on
every *other* coordinate — so its messages are logged like any other. This module is the one
place a grid is built; the trainer builds it and passes it to whoever needs it (there is no
process global: in-process ranks are threads of one process).

* ``grid.tp``, ``grid.cp``, ``grid.ep``, ``grid.dp``, ``grid.pp`` — one group per dimension;
* ``grid.mp`` — the model-parallel group, tp × pp ranks that together hold one replica
  (Megatron's ``get_model_parallel_group``: the gradient norm and the overflow check span it);
* ``grid.dp_cp`` — the dp × cp ranks that hold the same parameters (Megatron's data-parallel
  group with context parallel): context-parallel ranks replicate the parameters as
  data-parallel ones do, so gradients are averaged over both (``grid.dp`` itself when cp = 1);
* ``grid.dp_ep`` — the dp × ep ranks that read different micro-batches: under expert parallelism
  ``grid.dp`` is the expert-data-parallel group (the ranks holding the same experts) and
  ``grid.dp_ep`` the whole data-parallel group of the other parameters (``grid.dp`` when ep = 1).
"""
from __future__ import annotations

import math

DIMENSIONS = ("tp", "cp", "ep", "dp", "pp")      # fastest-varying first (Megatron's order)
ALWAYS_SHOWN = ("dp", "pp", "tp")                # coords a report always carries
CONFIG_KEYS = {"tp": "parallel.tensor", "pp": "parallel.pipeline", "cp": "parallel.context.size",
               "ep": "parallel.expert"}


class GridShape:
    """The degrees of a grid and its rank arithmetic; needs no communicator (for teaching,
    plots, config checks and the exercises). ``GridShape(8, tp=2, pp=2)``."""

    def __init__(self, world_size: int, tp: int = 1, pp: int = 1, *, cp: int = 1, ep: int = 1):
        given = {"world_size": world_size, "tp": tp, "pp": pp, "cp": cp, "ep": ep}
        for name, value in given.items():
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"process grid: {name} must be a positive integer, got {value!r}")
        model = tp * cp * ep * pp
        if world_size % model:
            others = [d for d in DIMENSIONS if d != "dp" and (given[d] > 1 or d in ("tp", "pp"))]
            names = {"tp": "tensor", "pp": "pipeline", "cp": "context", "ep": "expert"}
            raise ValueError(f"process grid: world size {world_size} is not divisible by "
                             f"{' × '.join(names[d] for d in others)} = {' × '.join(str(given[d]) for d in others)}; "
                             f"use a world size that is a multiple of {model} "
                             f"({', '.join(CONFIG_KEYS[d] for d in others)})")
        self.world_size = world_size
        self.sizes = {"tp": tp, "cp": cp, "ep": ep, "dp": world_size // model, "pp": pp}

    tp = property(lambda self: self.sizes["tp"])
    cp = property(lambda self: self.sizes["cp"])
    ep = property(lambda self: self.sizes["ep"])
    dp = property(lambda self: self.sizes["dp"])
    pp = property(lambda self: self.sizes["pp"])

    def __eq__(self, other) -> bool:
        return isinstance(other, GridShape) and (self.world_size, self.sizes) == (other.world_size, other.sizes)

    def __repr__(self) -> str:
        return f"GridShape({self.world_size}, " + ", ".join(f"{d}={s}" for d, s in self.sizes.items()) + ")"

    @property
    def shown(self) -> tuple:
        """The dimensions a coordinate dict carries: dp, pp, tp, and any other of size > 1."""
        return tuple(d for d in DIMENSIONS if d in ALWAYS_SHOWN or self.sizes[d] > 1)

    def coords(self, rank: int) -> dict:
        """This world rank's coordinates: its digits in the mixed radix of :data:`DIMENSIONS`."""
        if not isinstance(rank, int) or not 0 <= rank < self.world_size:
            raise ValueError(f"process grid: rank {rank!r} is outside a world of {self.world_size}")
        digits, rest = {}, rank
        for d in DIMENSIONS:                       # fastest first: tp, then cp, ep, dp, pp
            rest, digits[d] = divmod(rest, self.sizes[d])
        return {d: digits[d] for d in sorted(self.shown)}

    def rank_of(self, **coords) -> int:
        """The world rank at the given coordinates (those not given are 0)."""
        unknown = set(coords) - set(DIMENSIONS)
        if unknown:
            raise ValueError(f"process grid: unknown dimension(s) {sorted(unknown)}; the grid's are {DIMENSIONS}")
        rank, stride = 0, 1
        for d in DIMENSIONS:
            c = coords.get(d, 0)
            if not 0 <= c < self.sizes[d]:
                raise ValueError(f"process grid: {d} coordinate {c} is outside 0..{self.sizes[d] - 1}")
            rank, stride = rank + c * stride, stride * self.sizes[d]
        return rank

    def group_of(self, rank: int, dims) -> tuple:
        """The world ranks that share every coordinate of ``rank`` except those in ``dims``
        (one dimension name or several), in the order of their coordinates along ``dims``."""
        dims = (dims,) if isinstance(dims, str) else tuple(dims)
        mine = self._all_coords(rank)
        free = [d for d in DIMENSIONS if d in dims]
        out = []
        for i in range(math.prod(self.sizes[d] for d in free)):
            c = dict(mine)
            for d in free:                              # first named dimension varies fastest
                i, c[d] = divmod(i, self.sizes[d])
            out.append(self.rank_of(**c))
        return tuple(sorted(out)) if len(free) > 1 else tuple(out)

    def groups(self, dims) -> list:
        """Every group along ``dims`` (e.g. ``"dp"``, or ``("tp", "pp")`` for the model-parallel
        groups), each a tuple of world ranks; groups in order of their lowest rank."""
        return sorted({self.group_of(r, dims) for r in range(self.world_size)}, key=min)

    def _all_coords(self, rank: int) -> dict:
        digits, rest = {}, rank
        for d in DIMENSIONS:
            rest, digits[d] = divmod(rest, self.sizes[d])
        return digits

    def table(self) -> str:
        """A text picture of the grid: one line per pipeline stage, ranks grouped by dp."""
        lines = [f"{self.world_size} ranks = " + " × ".join(f"{d} {self.sizes[d]}" for d in ("dp", "pp", "tp"))
                 + "".join(f" × {d} {self.sizes[d]}" for d in ("cp", "ep") if self.sizes[d] > 1)]
        for p in range(self.pp):
            parts = []
            for d in range(self.dp):
                ranks = [r for r in range(self.world_size)
                         if self._all_coords(r)["pp"] == p and self._all_coords(r)["dp"] == d]
                parts.append(f"dp {d} [" + " ".join(map(str, ranks)) + "]")
            lines.append(f"  pp {p}: " + "  ".join(parts))
        return "\n".join(lines)


class ProcessGrid:
    """This rank's place in the grid and its sub-communicators, one per dimension.

    ``ProcessGrid(comm, tp=2, pp=2)`` is collective: every rank of ``comm`` must build it
    with the same degrees (each ``split`` is a collective call).
    """

    def __init__(self, comm, tp: int = 1, pp: int = 1, *, cp: int = 1, ep: int = 1):
        self.shape = GridShape(comm.size, tp, pp, cp=cp, ep=ep)
        self.world = comm
        self.coords = self.shape.coords(comm.rank)
        mine = self.shape._all_coords(comm.rank)
        self.groups = {}
        for d in DIMENSIONS:
            # why: a dimension's group is the ranks that agree on every other coordinate
            colour = tuple(mine[o] for o in DIMENSIONS if o != d)
            self.groups[d] = comm.split(color=colour, key=mine[d])
        # why: the tp × pp ranks of one replica share the gradient norm and the overflow verdict
        self.mp = comm.split(color=tuple(mine[o] for o in DIMENSIONS if o not in ("tp", "pp")),
                             key=mine["pp"] * tp + mine["tp"])
        # why: cp ranks hold the same parameters as dp ranks do: their gradients are averaged over both
        self.dp_cp = self.groups["dp"] if cp == 1 else comm.split(
            color=tuple(mine[o] for o in DIMENSIONS if o not in ("cp", "dp")), key=mine["dp"] * cp + mine["cp"])
        # why: ep ranks are data-parallel ranks too (they read different micro-batches): the
        # non-expert gradients are averaged over dp × ep, the experts' over grid.dp only
        self.dp_ep = self.groups["dp"] if ep == 1 else comm.split(
            color=tuple(mine[o] for o in DIMENSIONS if o not in ("ep", "dp")), key=mine["dp"] * ep + mine["ep"])

    tp = property(lambda self: self.groups["tp"])
    cp = property(lambda self: self.groups["cp"])
    ep = property(lambda self: self.groups["ep"])
    dp = property(lambda self: self.groups["dp"])
    pp = property(lambda self: self.groups["pp"])
    tp_size = property(lambda self: self.shape.tp)
    pp_size = property(lambda self: self.shape.pp)
    dp_size = property(lambda self: self.shape.dp)
    cp_size = property(lambda self: self.shape.cp)

    def __repr__(self) -> str:
        c = self.coords
        return ("<ProcessGrid rank " + str(self.world.rank) + ": "
                + " ".join(f"{d} {c[d]}/{self.shape.sizes[d]}" for d in DIMENSIONS if d in c) + ">")
