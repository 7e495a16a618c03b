"""The 3D process grid: which ranks hold which slice of the model and of the batch (SPEC §6.1).

A world of ``N`` ranks is arranged as ``dp × pp × tp`` with Megatron-LM's rank order: the
tensor-parallel rank varies fastest (tensor-parallel partners are neighbours, in a real
cluster inside one NVLink node), then the data-parallel rank, then the pipeline rank::

    rank = tp_rank + tp · (dp_rank + dp · pp_rank)

    N = 8, tp = 2, pp = 2 (so dp = 2):
        pp 0:  dp 0 → ranks 0 1 (tp 0, 1)    dp 1 → ranks 2 3
        pp 1:  dp 0 → ranks 4 5              dp 1 → ranks 6 7

Every group is a sub-communicator made with :meth:`Communicator.split` (MPI_Comm_split), so
its messages are logged like any other, and the grid is passed explicitly to whoever needs
it — there is no process global (in-process ranks are threads of one process; picotron's
global process-group manager is the habit STYLE.md asks us to avoid).

* ``grid.tp`` — the ranks that share one layer's weights (same dp, same pp);
* ``grid.dp`` — the ranks that hold the same weights and see different data (same tp, pp);
* ``grid.pp`` — the ranks that hold consecutive stages of one model replica (same tp, dp);
* ``grid.mp`` — the model-parallel group, tp × pp ranks that together hold one replica.
"""
from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class GridShape:
    """The degrees of a grid and its rank arithmetic; needs no communicator (for teaching,
    plots and config checks)."""

    world_size: int
    tp: int = 1
    pp: int = 1

    def __post_init__(self):
        for name in ("world_size", "tp", "pp"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"process grid: {name} must be a positive integer, got {value!r}")
        if self.world_size % (self.tp * self.pp):
            raise ValueError(f"process grid: world size {self.world_size} is not divisible by tensor × pipeline "
                             f"= {self.tp} × {self.pp}; use a world size that is a multiple of {self.tp * self.pp} "
                             f"(parallel.tensor, parallel.pipeline)")

    @property
    def dp(self) -> int:
        return self.world_size // (self.tp * self.pp)

    def coords(self, rank: int) -> dict:
        """``{"dp", "pp", "tp"}`` of world rank ``rank`` (Megatron order: tp fastest)."""
        if not 0 <= rank < self.world_size:
            raise ValueError(f"process grid: rank {rank} is outside a world of {self.world_size}")
        return {"dp": (rank // self.tp) % self.dp, "pp": rank // (self.tp * self.dp), "tp": rank % self.tp}

    def rank_of(self, dp: int = 0, pp: int = 0, tp: int = 0) -> int:
        """The world rank at coordinates (dp, pp, tp)."""
        return tp + self.tp * (dp + self.dp * pp)

    def table(self) -> str:
        """A text picture of the grid: one line per pipeline stage, ranks grouped by dp."""
        lines = [f"{self.world_size} ranks = dp {self.dp} × pp {self.pp} × tp {self.tp}"]
        for p in range(self.pp):
            groups = ["[" + " ".join(str(self.rank_of(d, p, t)) for t in range(self.tp)) + "]"
                      for d in range(self.dp)]
            lines.append(f"  pp {p}: " + "  ".join(f"dp {d} {g}" for d, g in enumerate(groups)))
        return "\n".join(lines)


class ProcessGrid:
    """This rank's place in a DP × PP × TP grid and its sub-communicators.

    ``ProcessGrid(comm, tp=2, pp=2)`` is collective: every rank of ``comm`` must build it
    with the same degrees (each ``split`` is a collective call).
    """

    def __init__(self, comm, tp: int = 1, pp: int = 1):
        self.shape = GridShape(comm.size, tp, pp)
        self.world = comm
        self.coords = self.shape.coords(comm.rank)
        c = self.coords
        # each split: ranks with the same colour form a group, ordered by the key
        self.tp = comm.split(color=(c["dp"], c["pp"]), key=c["tp"])            # same layer's shards
        self.dp = comm.split(color=(c["pp"], c["tp"]), key=c["dp"])            # same weights, other data
        self.pp = comm.split(color=(c["dp"], c["tp"]), key=c["pp"])            # consecutive stages
        self.mp = comm.split(color=c["dp"], key=c["pp"] * tp + c["tp"])        # one whole replica

    @property
    def tp_size(self) -> int:
        return self.shape.tp

    @property
    def pp_size(self) -> int:
        return self.shape.pp

    @property
    def dp_size(self) -> int:
        return self.shape.dp

    def __repr__(self) -> str:
        c = self.coords
        return (f"<ProcessGrid rank {self.world.rank}: dp {c['dp']}/{self.dp_size} pp {c['pp']}/{self.pp_size} "
                f"tp {c['tp']}/{self.tp_size}>")
