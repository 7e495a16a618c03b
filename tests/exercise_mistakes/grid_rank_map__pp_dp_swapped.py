"""Counts tp, then pp, then dp (pp and dp swapped): right whenever dp or pp is 1."""
EXPECT = ["Your ranks count tp, then pp, then dp (pp and dp swapped)", "world 8 = tp 1 × dp 2 × pp 4"]


def coords(rank, world_size, tp, pp):
    return {"tp": rank % tp, "pp": rank // tp % pp, "dp": rank // (tp * pp)}


def rank_of(dp_rank, pp_rank, tp_rank, world_size, tp, pp):
    return tp_rank + tp * (pp_rank + pp * dp_rank)


def groups(kind, world_size, tp, pp):
    dp = world_size // (tp * pp)
    sizes = {"tp": tp, "dp": dp, "pp": pp}
    spans = {"tp": ("tp",), "dp": ("dp",), "pp": ("pp",), "mp": ("tp", "pp")}[kind]
    found = {}
    for r in range(world_size):
        c = coords(r, world_size, tp, pp)
        found.setdefault(tuple(c[d] for d in sizes if d not in spans), []).append(r)
    return sorted(found.values(), key=min)
