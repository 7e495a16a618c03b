"""A correct student solution with a class of its own called GridShape and a variable called
grid: the names minidist uses are not forbidden, only importing minidist.parallel.grid. Must pass."""
import itertools

EXPECT = []


class GridShape:
    def __init__(self, world_size, tp, pp):
        self.sizes = {"tp": tp, "dp": world_size // (tp * pp), "pp": pp}
        self.grid = {}
        for rank, (p, d, t) in enumerate(itertools.product(range(pp), range(self.sizes["dp"]), range(tp))):
            self.grid[rank] = {"dp": d, "pp": p, "tp": t}


def coords(rank, world_size, tp, pp):
    return dict(GridShape(world_size, tp, pp).grid[rank])


def rank_of(dp_rank, pp_rank, tp_rank, world_size, tp, pp):
    grid = GridShape(world_size, tp, pp).grid
    return next(r for r, c in grid.items() if c == {"dp": dp_rank, "pp": pp_rank, "tp": tp_rank})


def groups(kind, world_size, tp, pp):
    grid = GridShape(world_size, tp, pp).grid
    spans = {"tp": {"tp"}, "dp": {"dp"}, "pp": {"pp"}, "mp": {"tp", "pp"}}[kind]
    found = {}
    for r in range(world_size):
        key = tuple(v for d, v in sorted(grid[r].items()) if d not in spans)
        found.setdefault(key, []).append(r)
    return sorted(found.values())
