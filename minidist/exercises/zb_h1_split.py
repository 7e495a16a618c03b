"""Exercise: ZB-H1, the zero-bubble schedule with 1F1B's memory (Qi et al. 2023, §2.2).

Reference: ``minidist.parallel.pipeline.zero_bubble.zb_h1``. Checked, like :mod:`.pipeline_1f1b`,
with minidist's validator and unit-time simulator.
"""
from __future__ import annotations

from ..defaults import ZB_H1
from ..parallel.pipeline.zero_bubble import zb_h1
from .grading import Wrong
from .pipeline_1f1b import check_valid, forwards_before_first_backward, to_schedule, unit_time_run

NAME = "zb_h1_split"
TOPIC = "pipeline"
TITLE = "ZB-H1: split the backward into B and W, and fill 1F1B's bubble with the W passes"
NOTEBOOK = "06_pipeline_schedules"
FUNCTIONS = ("schedule_zb_h1",)
FORBIDDEN = ("minidist.parallel.pipeline",)      # minidist's own schedules (its simulator checks yours)

STUB = '''"""ZB-H1 (Qi et al. 2023, "Zero Bubble Pipeline Parallelism", §2.2), as DATA.

A layer's backward is two passes: B computes the gradient of the layer's INPUT — the
previous stage waits for it — and W the gradient of its WEIGHTS — nobody waits for it. So W
can run whenever a rank would otherwise idle. ZB-H1 keeps 1F1B's shape and memory (at most
p micro-batches in flight per rank) and moves W passes into 1F1B's drain: with every F, B
and W taking one unit, its bubble (idle share of a step that waits for the whole pipeline)
is (p−1)/(3m+p−1) — the idle time per rank is p−1 units, a third of 1F1B's 3(p−1) — when
m ≥ p.

Rank r (stage r of p, m micro-batches) runs:

1. warm-up: p−r forwards (at most m) — one more than 1F1B's, because its cycle below
   starts with a backward;
2. m cycles k = 0 … m−1: B of micro-batch k; then, from cycle r on, the W of the oldest
   micro-batch whose B is done (so each W trails its B by r cycles: the later the rank,
   the more W passes it keeps for the end); then the next forward, if any is left;
3. the W passes still held back.

Write ``schedule_zb_h1(p, m)`` returning a list of p lists: element r is rank r's program,
a list of ("F", i), ("B", i) and ("W", i) pairs in the order rank r runs them — every
micro-batch gets one F, one B and one W on every rank. The grader runs your lists on
minidist's schedule simulator for p in 2, 3, 4, 8, and for more (p, m) of its own, drawn
from the seed it prints.

Not allowed (the grader looks at what your code calls or imports): minidist.parallel.pipeline
(minidist's own schedules). Helpers of your own may have any name.
"""


def schedule_zb_h1(p, m):
    raise NotImplementedError
'''

HINTS = [
    "Start from 1F1B: warm-up forwards, then cycles, then what is left; here the cycle is B, (W), F.",
    "Rank r's warm-up is min(p - r, m) forwards; in cycle k run F of micro-batch k + warm-up if it is < m.",
    "Count the W passes done so far: from cycle k = r on, run W of that count's micro-batch after B_k.",
    "At the end, run the W passes of the micro-batches you held back, oldest first.",
]

SIZES = [(2, 2), (2, 5), (3, 3), (3, 7), (4, 4), (4, 9), (8, 8), (8, 17)]
FEW = [(4, 2), (8, 3)]                              # fewer micro-batches than ranks: still valid


def reference():
    class Reference:
        @staticmethod
        def schedule_zb_h1(p, m):
            return [[(a.op, a.micro_batch) for a in acts] for acts in zb_h1(p, m).actions]
    return Reference


def _schedule(sol, p, m):
    return to_schedule(sol.schedule_zb_h1(p, m), ZB_H1, p, m, "FBW")


def _explain(s, text: str) -> str:
    p = s.ranks
    for r, acts in enumerate(s.actions):
        seen = set()
        for a in acts:
            if a.op == "W" and ("B", a.micro_batch) not in seen:
                return (f"Rank {r} runs W of micro-batch {a.micro_batch} before its B: W needs what B computed "
                        f"(the gradient of the layer's output), so it always comes after it")
            seen.add((a.op, a.micro_batch))
    if "deadlock" in text and forwards_before_first_backward(s) == [min(p - r - 1, s.micro_batches)
                                                                    for r in range(p)]:
        return ("Your warm-up is 1F1B's, p−r−1 forwards. ZB-H1's cycle starts with B, so the forward that "
                "1F1B runs first in its steady state has to be in the warm-up: p−r forwards")
    return ""


def _valid(sol, sizes=SIZES + FEW) -> None:
    for p, m in sizes:
        s = _schedule(sol, p, m)
        check_valid(s, _explain)
        for r, acts in enumerate(s.actions):
            weights = {a.micro_batch for a in acts if a.op == "W"}
            missing = sorted(set(range(m)) - weights)
            if missing:
                raise Wrong(f"p={p}, m={m}: rank {r} has no weight-gradient pass (W) for micro-batch(es) {missing}: "
                            f"split every backward "
                            f"into B (input gradient) and W (weight gradient)")


def _bubble(sol, sizes=SIZES) -> None:
    for p, m in sizes:
        s = _schedule(sol, p, m)
        got, want = unit_time_run(s).bubble_fraction, (p - 1) / (3 * m + p - 1)
        if abs(got - want) <= 1e-9:
            continue
        idle = got / (1 - got) * 3 * m                  # idle units per rank: bubble = idle / (3m + idle)
        why = ("W right after its B, or every W at the very end, leaves the drain as it was: at the end of the "
               "step rank r idles while ranks 0 … r−1 finish their backwards. Hold rank r's W back r cycles, so "
               "that the W passes it kept fill that time" if abs(idle - 2 * (p - 1)) < 1e-6 else
               "a rank idles where a W (or a B) could run")
        raise Wrong(f"p={p}, m={m}: with F = B = W = 1 unit your bubble is {got:.4f}, {idle:.3g} idle units per "
                    f"rank; ZB-H1's is (p−1)/(3m+p−1) = {want:.4f}, p−1 = {p - 1} idle units (1F1B's: 3(p−1) = "
                    f"{3 * (p - 1)}): {why}")


def _memory(sol, sizes=SIZES + FEW) -> None:
    for p, m in sizes:
        s = _schedule(sol, p, m)
        got = unit_time_run(s).in_flight               # micro-batches whose W has not run yet
        for r in range(p):
            if got[r] > min(p, m):
                why = (" — every W waits for the end, so every micro-batch's activations stay" if got[r] == m else "")
                raise Wrong(f"p={p}, m={m}: rank {r} holds up to {got[r]} micro-batches' activations at once (a "
                            f"micro-batch is held from its F to its W); ZB-H1 keeps 1F1B's memory, at most "
                            f"min(p, m) = {min(p, m)}{why}")


def held_out(sol, rng):
    """(p, m) of the grader's: m ≥ p for the bubble, and one m < p for validity and memory."""
    p = int(rng.integers(2, 9))
    big = [(p, int(rng.integers(p, 3 * p + 1))), (int(rng.integers(2, 9)), 0)]
    big[1] = (big[1][0], int(rng.integers(big[1][0], 3 * big[1][0] + 1)))
    few = [(p + 1, int(rng.integers(1, p + 1)))]
    _valid(sol, big + few)
    _bubble(sol, big)
    _memory(sol, big + few)


CHECKS = [
    ("a valid program: every F, B and W once, W after its B, no deadlock (p = 2, 3, 4, 8)", _valid),
    ("bubble (p−1)/(3m+p−1) with F = B = W = 1: a third of 1F1B's idle time", _bubble),
    ("memory: at most min(p, m) micro-batches in flight on every rank, as 1F1B", _memory),
    ("held out: (p, m) of the grader's", held_out),
]
