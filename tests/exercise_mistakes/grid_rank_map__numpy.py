"""A correct student solution, written another way: the world as an array of shape
(pp, dp, tp) (tp fastest), groups read off by transposing and reshaping it. Must pass."""
import numpy as np

EXPECT = []


def _grid(world_size, tp, pp):
    dp = world_size // (tp * pp)
    return np.arange(world_size).reshape(pp, dp, tp)        # (pp, dp, tp)


def coords(rank, world_size, tp, pp):
    p, d, t = np.unravel_index(rank, _grid(world_size, tp, pp).shape)
    return {"dp": d, "pp": p, "tp": t}                       # NumPy integers


def rank_of(dp_rank, pp_rank, tp_rank, world_size, tp, pp):
    return _grid(world_size, tp, pp)[pp_rank, dp_rank, tp_rank]


def groups(kind, world_size, tp, pp):
    grid = _grid(world_size, tp, pp)
    pp_, dp, tp_ = grid.shape
    if kind == "tp":
        out = grid.reshape(-1, tp_)                          # (pp·dp, tp)
    elif kind == "dp":
        out = grid.transpose(0, 2, 1).reshape(-1, dp)        # (pp·tp, dp)
    elif kind == "pp":
        out = grid.transpose(1, 2, 0).reshape(-1, pp_)       # (dp·tp, pp)
    else:
        out = np.sort(grid.transpose(1, 0, 2).reshape(dp, -1), axis=1)   # (dp, pp·tp)
    return out                                               # an array: its rows are the groups
