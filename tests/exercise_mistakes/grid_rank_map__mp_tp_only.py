"""The model-parallel group taken as the tensor-parallel group: it misses the other pipeline
stages of the replica."""
EXPECT = ["mp group should be", "the other pipeline stages of this replica", "world 3 = tp 1 × dp 1 × pp 3"]


def coords(rank, world_size, tp, pp):
    dp = world_size // (tp * pp)
    return {"dp": rank // tp % dp, "pp": rank // (tp * dp), "tp": rank % tp}


def rank_of(dp_rank, pp_rank, tp_rank, world_size, tp, pp):
    dp = world_size // (tp * pp)
    return tp_rank + tp * (dp_rank + dp * pp_rank)


def groups(kind, world_size, tp, pp):
    dp = world_size // (tp * pp)
    if kind in ("tp", "mp"):
        return [list(range(s, s + tp)) for s in range(0, world_size, tp)]
    if kind == "dp":
        return [list(range(p * tp * dp + t, (p + 1) * tp * dp, tp)) for p in range(pp) for t in range(tp)]
    return [list(range(d * tp + t, world_size, tp * dp)) for d in range(dp) for t in range(tp)]
