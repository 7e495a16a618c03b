"""Exercise: the 3D process grid — Megatron's rank order and the tp, dp, pp and mp groups.

Reference: ``minidist.parallel.grid.GridShape`` (``coords``, ``rank_of``, ``groups``). The
checks grade layouts the statement does not show: world sizes that are not powers of two,
tp = 1, pp = 1, a world of one rank.
"""
from __future__ import annotations

import operator

from ..parallel.grid import GridShape
from .grading import Wrong

NAME = "grid_rank_map"
TOPIC = "3D parallelism"
TITLE = "The DP × TP × PP grid: each rank's coordinates and its tp, dp, pp, mp groups"
NOTEBOOK = "10_3d_parallelism"
FUNCTIONS = ("coords", "rank_of", "groups")
FORBIDDEN_IMPORTS = ("minidist.parallel.grid",)    # a module, not names: a student may call a variable `grid`

STUB = '''"""The 3D process grid (Megatron-LM; Narayanan et al. 2021): which world rank does what.

N = dp · tp · pp ranks train one GPT:

* tp  tensor parallel — tp ranks split every layer's weights (Megatron's f and g);
* pp  pipeline parallel — pp ranks hold consecutive stages of the model;
* dp  data parallel — dp replicas of the whole model, each made of tp · pp ranks, see
  different micro-batches and all-reduce their gradients.

Each world rank has a coordinate (dp_rank, pp_rank, tp_rank). Megatron-LM numbers the ranks
with tp varying FASTEST, then dp, then pp:

    rank = tp_rank + tp · (dp_rank + dp · pp_rank)

Why tp fastest: a launcher puts consecutive ranks on one node, and tensor parallelism
all-reduces activations twice per transformer layer in the forward and twice in the
backward, so its partners should be NVLink neighbours (Narayanan et al. 2021, §3: tensor
parallelism inside a node). A pipeline stage sends one activation per micro-batch, and data
parallelism one gradient all-reduce per step: they can cross nodes.

Example, N = 8 = dp 2 × tp 2 × pp 2:

                  tp 0  tp 1           tp 0  tp 1
    pp 0:  dp 0 [   0     1 ]   dp 1 [   2     3 ]      <- first stage of both replicas
    pp 1:  dp 0 [   4     5 ]   dp 1 [   6     7 ]      <- last stage

    tp groups (same dp and pp):  [0, 1] [2, 3] [4, 5] [6, 7]
    dp groups (same pp and tp):  [0, 2] [1, 3] [4, 6] [5, 7]
    pp groups (same dp and tp):  [0, 4] [1, 5] [2, 6] [3, 7]
    mp groups (same dp):         [0, 1, 4, 5] [2, 3, 6, 7]   (model parallel: one replica)

Every function takes the layout as its last three arguments: the world size N, tp and pp
(dp = N // (tp · pp); the grader only uses layouts where this divides). Write

* coords(rank, world_size, tp, pp) -> {"dp": dp_rank, "pp": pp_rank, "tp": tp_rank}
* rank_of(dp_rank, pp_rank, tp_rank, world_size, tp, pp) -> the world rank (coords' inverse)
* groups(kind, world_size, tp, pp) -> a list of lists of world ranks, for kind "tp", "dp",
  "pp" or "mp": every group of that kind, i.e. the ranks that agree on every coordinate but
  the kind's own ("mp": all but tp and pp). Each group sorted, the groups in the order of
  their lowest rank, every rank in exactly one group.

The grader checks every rank of layouts this example does not show (world sizes that are not
powers of two, tp = 1, pp = 1, a world of one rank), and three more drawn from the seed it
prints. Compute the ranks yourself: importing
minidist.parallel.grid, which holds minidist's own answer, fails the exercise.
"""


def coords(rank, world_size, tp, pp):
    raise NotImplementedError


def rank_of(dp_rank, pp_rank, tp_rank, world_size, tp, pp):
    raise NotImplementedError


def groups(kind, world_size, tp, pp):
    raise NotImplementedError
'''

HINTS = [
    "dp = world_size // (tp * pp). tp_rank = rank % tp; rank // tp counts whole tp groups, and its "
    "digits are dp_rank (the faster one: % dp) and pp_rank (// dp).",
    "rank_of writes the same mixed-radix number the other way: tp_rank + tp * (dp_rank + dp * pp_rank).",
    "A group of one kind: loop over the coordinates that stay fixed outside, over the kind's own "
    "coordinate inside, and call rank_of. For 'dp': for p in range(pp), for t in range(tp), the group "
    "[rank_of(d, p, t, ...) for d in range(dp)].",
    "'mp' fixes dp only: for each d, the tp · pp ranks rank_of(d, p, t, ...) over every p and t, sorted.",
]

# (world size, tp, pp), none of them the statement's 8 = 2 × 2 × 2; the degenerate ones first,
# so that a numbering mistake is named on the smallest layout that shows it
LAYOUTS = [(1, 1, 1), (4, 1, 1), (4, 4, 1), (3, 1, 3), (6, 3, 1), (8, 1, 4),
           (12, 2, 3), (16, 2, 2), (18, 3, 2), (24, 2, 3)]
FREE = {"tp": ("tp",), "dp": ("dp",), "pp": ("pp",), "mp": ("tp", "pp")}   # the coordinates a group spans
ROLE = {"dp": "data-parallel replica", "pp": "pipeline stage", "tp": "tensor-parallel position"}
RULE = "rank = tp_rank + tp·(dp_rank + dp·pp_rank)"
# typical wrong orders (fastest first) and what they mean
ORDERS = [
    (("dp", "tp", "pp"), f"In your numbering dp varies fastest, so the partners of a tp group are dp ranks apart. "
                         f"Megatron puts tp fastest ({RULE}) so that tensor-parallel partners, which all-reduce "
                         f"in every layer, are NVLink neighbours on one node"),
    (("tp", "pp", "dp"), f"Your ranks count tp, then pp, then dp (pp and dp swapped); Megatron's count tp, "
                         f"then dp, then pp ({RULE}), so a stage's pipeline partner is tp·dp ranks away"),
    (("pp", "dp", "tp"), f"Your order is reversed: pp varies fastest. Megatron's is tp fastest, then dp, then "
                         f"pp ({RULE})"),
]


def reference():
    class Reference:
        @staticmethod
        def coords(rank, world_size, tp, pp):
            return GridShape(world_size, tp, pp).coords(rank)

        @staticmethod
        def rank_of(dp_rank, pp_rank, tp_rank, world_size, tp, pp):
            return GridShape(world_size, tp, pp).rank_of(dp=dp_rank, pp=pp_rank, tp=tp_rank)

        @staticmethod
        def groups(kind, world_size, tp, pp):
            return [list(g) for g in GridShape(world_size, tp, pp).groups(FREE[kind])]
    return Reference


# -- the grid in any order: the models of the typical mistakes ----------------------------------
def _sizes(n, tp, pp) -> dict:
    return {"tp": tp, "dp": n // (tp * pp), "pp": pp}


def _coords_in(order, rank, n, tp, pp) -> dict:
    """A rank's coordinates when the dimensions vary in ``order`` (fastest first)."""
    sizes, out = _sizes(n, tp, pp), {}
    for d in order:
        rank, out[d] = divmod(rank, sizes[d])
    return out


def _rank_in(order, c, n, tp, pp) -> int:
    sizes, rank, stride = _sizes(n, tp, pp), 0, 1
    for d in order:
        rank, stride = rank + c[d] * stride, stride * sizes[d]
    return rank


def _groups_in(order, kind, n, tp, pp) -> list:
    by_fixed: dict = {}
    for r in range(n):
        c = _coords_in(order, r, n, tp, pp)
        by_fixed.setdefault(tuple(c[d] for d in ("dp", "pp", "tp") if d not in FREE[kind]), []).append(r)
    return sorted(by_fixed.values(), key=min)


def _coords_table(order, n, tp, pp) -> list:
    return [_coords_in(order, k, n, tp, pp) for k in range(n)]


def _rank_table(order, n, tp, pp) -> list:
    """rank_of in ``order`` at the (right) coordinates of ranks 0 … n−1."""
    shape = GridShape(n, tp, pp)
    return [_rank_in(order, shape.coords(k), n, tp, pp) for k in range(n)]


def _named_order(got, model, *args) -> str:
    """The message of the first wrong order in which ``model(order, *args)`` gives the student's
    result, or ""."""
    return next((why for order, why in ORDERS if got == model(order, *args)), "")


def _layout(n, tp, pp) -> str:
    return f"world {n} = tp {tp} × dp {n // (tp * pp)} × pp {pp}"


def _ranks(n) -> str:
    return f"{n} rank{'s' * (n != 1)}"


def _sentence(text: str, upper: bool = True) -> str:
    """``text`` as a sentence: a capital first letter, a full stop unless it asks a question."""
    text = text[:1].upper() + text[1:] if upper else text
    return text if text.endswith(("?", ".")) else text + "."


def _int(value, what: str) -> int:
    try:
        return operator.index(value)
    except TypeError:
        floor = " (a float: // divides integers)" if isinstance(value, float) else ""
        raise Wrong(f"{what}: expected an integer, got {value!r:.60}{floor}") from None


# -- coords and rank_of ------------------------------------------------------------------------------
def _as_coords(got, where: str) -> dict:
    if not isinstance(got, dict) or set(got) != {"dp", "pp", "tp"}:
        raise Wrong(f"{where}: return a dict with the keys 'dp', 'pp', 'tp', got {got!r:.80}")
    return {d: _int(v, f"{where}, {d}_rank") for d, v in got.items()}


def _coords(sol, layouts=LAYOUTS) -> None:
    for n, tp, pp in layouts:
        shape, layout = GridShape(n, tp, pp), _layout(n, tp, pp)
        got = [_as_coords(sol.coords(r, n, tp, pp), f"{layout}: coords({r}, {n}, {tp}, {pp})") for r in range(n)]
        for r in range(n):
            want = shape.coords(r)
            if got[r] == want:
                continue
            why = _named_order(got, _coords_table, n, tp, pp)
            if not why:
                out = next((d for d in ("dp", "pp", "tp") if not 0 <= got[r][d] < shape.sizes[d]), None)
                why = (f"your {out}_rank {got[r][out]} is outside 0..{shape.sizes[out] - 1} ({out} = {shape.sizes[out]}): "
                       f"a missing modulo? " if out else "") + \
                      (f"From {RULE}: tp_rank = rank % tp, dp_rank = (rank // tp) % dp, pp_rank = rank // (tp·dp)")
            raise Wrong(f"{layout}: rank {r} should be at dp {want['dp']}, pp {want['pp']}, tp {want['tp']}; "
                        f"yours says dp {got[r]['dp']}, pp {got[r]['pp']}, tp {got[r]['tp']}. {_sentence(why)}")


def _rank_of(sol, layouts=LAYOUTS) -> None:
    for n, tp, pp in layouts:
        shape, layout = GridShape(n, tp, pp), _layout(n, tp, pp)
        where = [shape.coords(r) for r in range(n)]
        got = [_int(sol.rank_of(c["dp"], c["pp"], c["tp"], n, tp, pp),
                    f"{layout}: rank_of({c['dp']}, {c['pp']}, {c['tp']}, {n}, {tp}, {pp})") for c in where]
        for r, c in enumerate(where):
            if got[r] == r:
                continue
            why = _named_order(got, _rank_table, n, tp, pp)
            if not why and got[0] and got == [k + got[0] for k in range(n)]:
                why = f"all your ranks are off by {got[0]}: world ranks and coordinates count from 0"
            if not why:
                twice = sorted(k for k in range(n) if got.count(got[k]) > 1)
                why = ((f"rank {got[r]} is not in a world of {_ranks(n)}. " if not 0 <= got[r] < n else
                        f"your function gives the same rank to {len(twice)} coordinates (those of ranks "
                        f"{twice[:4]}{'…' if len(twice) > 4 else ''}), so some ranks get none. " if twice else "")
                       + f"The rule is {RULE}: each coordinate's stride is the product of the faster sizes")
            raise Wrong(f"{layout}: the rank at dp {c['dp']}, pp {c['pp']}, tp {c['tp']} is {r}; your rank_of gives "
                        f"{got[r]}. {_sentence(why)}")


# -- groups ------------------------------------------------------------------------------------------
def _as_groups(got, where: str) -> list:
    try:
        return [[_int(r, f"{where}: a rank") for r in g] for g in got]
    except TypeError:
        raise Wrong(f"{where}: return a list of groups, each a list of world ranks; got {got!r:.80}") from None


def _why_group(kind, r, mine, want, n, tp, pp) -> str:
    """Why rank r's group ``mine`` is not ``want``: a rank that does not belong, or one missing."""
    shape = GridShape(n, tp, pp)
    me = shape.coords(r)
    outside = [x for x in mine if not 0 <= x < n]
    if outside:
        return f"rank {outside[0]} is not in a world of {_ranks(n)}: an off-by-one in a range?"
    twice = sorted({x for x in mine if mine.count(x) > 1})
    if twice:
        return f"it lists rank {twice[0]} twice"
    extra, missing = sorted(set(mine) - set(want)), sorted(set(want) - set(mine))
    if extra:
        x, cx = extra[0], shape.coords(extra[0])
        fixed = [d for d in ("dp", "pp", "tp") if d not in FREE[kind]]
        d = next(d for d in fixed if cx[d] != me[d])
        return (f"it holds rank {x}, which is in another {ROLE[d]} ({d} {cx[d]}; rank {r} is at {d} {me[d]}): "
                f"{'an' if kind == 'mp' else 'a'} {kind} group holds only ranks that share rank {r}'s "
                f"{' and '.join(fixed)}")
    if kind == "mp" and all(shape.coords(x)["pp"] != me["pp"] for x in missing):
        return (f"it lacks ranks {missing}: the other pipeline stages of this replica. A model-parallel group "
                f"is all tp · pp = {tp * pp} ranks that hold one replica, every stage of it")
    if kind == "mp" and all(shape.coords(x)["tp"] != me["tp"] for x in missing):
        return f"it lacks ranks {missing}: the other tensor-parallel ranks of this replica's stages"
    if missing == [max(want)]:
        return f"its last rank, {missing[0]}, is missing: a range that stops one early?"
    return f"it lacks ranks {missing}"


def _contiguous_mp(kind, n, tp, pp):
    """The typical mp mistake: consecutive blocks of tp·pp ranks taken for replicas."""
    return [list(range(s, s + tp * pp)) for s in range(0, n, tp * pp)] if kind == "mp" else None


CONTIGUOUS_MP = ("a replica's tp · pp ranks are not consecutive: dp varies before pp, so the next stage of "
                 "a replica is tp·dp ranks further on, and a block of tp · pp consecutive ranks mixes replicas")


def _check_groups(kind):
    def check(sol, layouts=LAYOUTS):
        for n, tp, pp in layouts:
            layout = _layout(n, tp, pp)
            want = [list(g) for g in GridShape(n, tp, pp).groups(FREE[kind])]
            got = _as_groups(sol.groups(kind, n, tp, pp), f"{layout}: groups({kind!r}, {n}, {tp}, {pp})")
            if got == want:
                continue
            if got == _contiguous_mp(kind, n, tp, pp):
                named = " " + _sentence(CONTIGUOUS_MP)
            else:
                named = _named_order(got, _groups_in, kind, n, tp, pp)
                named = f" These are the {kind} groups of a grid numbered another way. {_sentence(named)}" \
                    if named else ""
            for r in range(n):
                holding = [g for g in got if r in g]
                i, w = next((i, g) for i, g in enumerate(want) if r in g)
                if len(holding) > 1:
                    raise Wrong(f"{layout}: rank {r} is in {len(holding)} of your {kind} groups ({holding[:3]}); "
                                f"every rank is in exactly one.{named}")
                if not holding and got == want[:i] + want[i + 1:]:
                    raise Wrong(f"{layout}: rank {r} is in none of your {kind} groups: you return {len(got)} "
                                f"groups, {len(want)} expected; {w} is missing" +
                                (" — a range that stops one early?" if i == len(want) - 1 else ".") + named)
                mine = holding[0] if holding else got[i] if i < len(got) and set(got[i]) < set(w) else None
                if mine is None:
                    raise Wrong(f"{layout}: rank {r} is in none of your {kind} groups; it belongs to {w}.{named}")
                if sorted(mine) != w:
                    raise Wrong(f"{layout}: rank {r}'s {kind} group should be {w}, yours is {mine}: "
                                f"{_sentence(_why_group(kind, r, sorted(mine), w, n, tp, pp), upper=False)}{named}")
            if len(got) != len(want):      # every rank sits in its right group: the others hold none
                stray = [g for g in got if not set(g) & set(range(n))]
                raise Wrong(f"{layout}: you return {len(got)} {kind} groups, {len(want)} expected; "
                            f"{stray[:2]} hold{'s' * (len(stray) == 1)} no rank of the world (0 … {n - 1})")
            unsorted = next((g for g in got if g != sorted(g)), None)
            if unsorted:
                raise Wrong(f"{layout}: your {kind} group {unsorted} is not sorted; return each group's ranks in "
                            f"increasing order")
            raise Wrong(f"{layout}: your {kind} groups are the right ones in another order "
                        f"(first ranks {[g[0] for g in got]}); order them by their lowest rank: "
                        f"{[g[0] for g in want]}")
    return check


def held_out(sol, rng):
    """Three layouts of the grader's: tp, dp and pp from 1 to 4 each (the statement's 2 × 2 × 2 left out)."""
    layouts = []
    while len(layouts) < 3:
        tp, dp, pp = (int(v) for v in rng.integers(1, 5, size=3))
        if (tp, dp, pp) != (2, 2, 2):
            layouts.append((tp * dp * pp, tp, pp))
    _coords(sol, layouts)
    _rank_of(sol, layouts)
    for kind in FREE:
        _check_groups(kind)(sol, layouts)


CHECKS = [
    (f"coords: tp fastest, then dp, then pp ({RULE}), every rank of {len(LAYOUTS)} layouts", _coords),
    ("rank_of: the inverse of coords", _rank_of),
    ("tp groups: tp neighbouring ranks (same dp and pp)", _check_groups("tp")),
    ("dp groups: one rank per replica, tp apart (same pp and tp)", _check_groups("dp")),
    ("pp groups: one rank per stage, tp·dp apart (same dp and tp)", _check_groups("pp")),
    ("mp groups: the tp × pp ranks of one replica (same dp)", _check_groups("mp")),
    ("held out: three layouts of the grader's, tp, dp and pp from 1 to 4", held_out),
]
