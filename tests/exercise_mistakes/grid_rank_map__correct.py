"""A correct student solution, written with nested loops over the coordinates: must pass."""
EXPECT = []


def coords(rank, world_size, tp, pp):
    dp = world_size // (tp * pp)
    return {"dp": rank // tp % dp, "pp": rank // (tp * dp), "tp": rank % tp}


def rank_of(dp_rank, pp_rank, tp_rank, world_size, tp, pp):
    dp = world_size // (tp * pp)
    return tp_rank + tp * (dp_rank + dp * pp_rank)


def groups(kind, world_size, tp, pp):
    dp = world_size // (tp * pp)

    def r(d, p, t):
        return rank_of(d, p, t, world_size, tp, pp)

    if kind == "tp":
        return [[r(d, p, t) for t in range(tp)] for p in range(pp) for d in range(dp)]
    if kind == "dp":
        return [[r(d, p, t) for d in range(dp)] for p in range(pp) for t in range(tp)]
    if kind == "pp":
        return [[r(d, p, t) for p in range(pp)] for d in range(dp) for t in range(tp)]
    if kind == "mp":
        return [sorted(r(d, p, t) for p in range(pp) for t in range(tp)) for d in range(dp)]
    raise ValueError(kind)
