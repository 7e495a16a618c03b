"""Off-by-one: the tensor-parallel groups stop one group early (range(0, N - tp, tp)), the
pipeline groups stop one rank early (range(first, N - 1, tp·dp)), rank_of counts from 1."""
EXPECT = ["you return 0 groups, 1 expected; [0] is missing — a range that stops one early?",
          "rank 0's pp group should be [0], yours is []: its last rank, 0, is missing: a range",
          "your rank_of gives 1", "All your ranks are off by 1"]


def coords(rank, world_size, tp, pp):
    dp = world_size // (tp * pp)
    return {"dp": rank // tp % dp, "pp": rank // (tp * dp), "tp": rank % tp}


def rank_of(dp_rank, pp_rank, tp_rank, world_size, tp, pp):
    dp = world_size // (tp * pp)
    return 1 + tp_rank + tp * (dp_rank + dp * pp_rank)


def groups(kind, world_size, tp, pp):
    dp = world_size // (tp * pp)
    if kind == "tp":
        return [list(range(s, s + tp)) for s in range(0, world_size - tp, tp)]
    if kind == "dp":
        return [list(range(p * tp * dp + t, (p + 1) * tp * dp, tp)) for p in range(pp) for t in range(tp)]
    if kind == "pp":
        return [list(range(d * tp + t, world_size - 1, tp * dp)) for d in range(dp) for t in range(tp)]
    return [sorted(tp * d + t + tp * dp * p for p in range(pp) for t in range(tp)) for d in range(dp)]
