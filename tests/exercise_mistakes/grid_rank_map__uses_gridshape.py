"""Hands the work to minidist's own GridShape: every check passes, the rules of the exercise do not."""
from minidist.parallel import grid as g

EXPECT = ["imports `minidist.parallel.grid`"]


def coords(rank, world_size, tp, pp):
    return g.GridShape(world_size, tp, pp).coords(rank)


def rank_of(dp_rank, pp_rank, tp_rank, world_size, tp, pp):
    return g.GridShape(world_size, tp, pp).rank_of(dp=dp_rank, pp=pp_rank, tp=tp_rank)


def groups(kind, world_size, tp, pp):
    dims = ("tp", "pp") if kind == "mp" else kind
    return [list(x) for x in g.GridShape(world_size, tp, pp).groups(dims)]
