"""Numbers the ranks with dp varying fastest (dp, then tp, then pp): consistent everywhere, but
tensor-parallel partners end up dp ranks apart instead of neighbours."""
EXPECT = ["In your numbering dp varies fastest", "NVLink neighbours",
          "world 6 = tp 3 × dp 2 × pp 1: rank 1 should be at dp 0"]


def coords(rank, world_size, tp, pp):
    dp = world_size // (tp * pp)
    return {"dp": rank % dp, "tp": rank // dp % tp, "pp": rank // (dp * tp)}


def rank_of(dp_rank, pp_rank, tp_rank, world_size, tp, pp):
    dp = world_size // (tp * pp)
    return dp_rank + dp * (tp_rank + tp * pp_rank)


def groups(kind, world_size, tp, pp):
    spans = {"tp": ("tp",), "dp": ("dp",), "pp": ("pp",), "mp": ("tp", "pp")}[kind]
    found = {}
    for r in range(world_size):
        c = coords(r, world_size, tp, pp)
        found.setdefault(tuple(c[d] for d in ("dp", "pp", "tp") if d not in spans), []).append(r)
    return sorted(found.values(), key=min)
