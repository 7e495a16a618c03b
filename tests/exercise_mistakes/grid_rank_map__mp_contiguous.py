"""The model-parallel groups as consecutive blocks of tp · pp ranks: a replica is not contiguous
(dp varies before pp), so a block mixes the replicas."""
EXPECT = ["mp group should be", "another data-parallel replica", "world 8 = tp 1 × dp 2 × pp 4",
          "A replica's tp · pp ranks are not consecutive"]


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
    if kind == "mp":
        return [list(range(s, s + tp * pp)) for s in range(0, world_size, tp * pp)]
    if kind == "dp":
        return [list(range(p * tp * dp + t, (p + 1) * tp * dp, tp)) for p in range(pp) for t in range(tp)]
    return [list(range(d * tp + t, world_size, tp * dp)) for d in range(dp) for t in range(tp)]
