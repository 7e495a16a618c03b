"""The data-parallel group as every rank tp apart through the whole world: it runs on into the
next pipeline stages."""
EXPECT = ["dp group should be", "another pipeline stage", "world 3 = tp 1 × dp 1 × pp 3"]


def coords(rank, world_size, tp, pp):
    dp = world_size // (tp * pp)
    return {"dp": rank // tp % dp, "pp": rank // (tp * dp), "tp": rank % tp}


def rank_of(dp_rank, pp_rank, tp_rank, world_size, tp, pp):
    dp = world_size // (tp * pp)
    return tp_rank + tp * (dp_rank + dp * pp_rank)


def groups(kind, world_size, tp, pp):
    dp = world_size // (tp * pp)
    if kind == "tp":
        return [list(range(s, s + tp)) for s in range(0, world_size, tp)]
    if kind == "dp":
        return [list(range(t, world_size, tp)) for t in range(tp)]
    if kind == "pp":
        return [list(range(d * tp + t, world_size, tp * dp)) for d in range(dp) for t in range(tp)]
    return [sorted(rank_of(d, p, t, world_size, tp, pp) for p in range(pp) for t in range(tp)) for d in range(dp)]
