"""Exercise: the elements one data-parallel rank sends per step under DDP and ZeRO 1-3, with
gradient accumulation (Rajbhandari et al. 2020, §7; ring volumes of Patarasuk & Yuan 2009).

Reference: ``minidist.estimate.comm.dp_comm_elements``.
"""
from __future__ import annotations

from ..defaults import DDP, PARAMETER_SERVER, ZERO1, ZERO2, ZERO3
from ..estimate.comm import dp_comm_elements
from .grading import Wrong, expected_got

NAME = "dp_comm_volume"
TOPIC = "estimator"
TITLE = "Elements a data-parallel rank sends per step: DDP, ZeRO 1-3, gradient accumulation"
NOTEBOOK = "09_estimator"
FUNCTIONS = ("elements_sent",)
FORBIDDEN = ("minidist.estimate",)        # minidist's own calculators

STUB = '''"""How much does one data-parallel rank SEND per optimizer step? (ZeRO, Rajbhandari et al.
2020, §7; ring collectives, Patarasuk & Yuan 2009.)

Ψ parameters (and as many gradient elements) on each of n data-parallel ranks. A ring
collective over n ranks on a message of M elements makes each rank send

    all-reduce:      2·(n−1)/n · M      (a reduce-scatter, then an all-gather)
    reduce-scatter:    (n−1)/n · M
    all-gather:        (n−1)/n · M

Per optimizer step, with k micro-batches of gradient accumulation:

* "ddp" (ZeRO-0): one all-reduce of the gradients, after the last micro-batch (the others
  accumulate locally, PyTorch's no_sync);
* "zero1": the optimizer states are sharded: one reduce-scatter of the gradients after the
  last micro-batch, then one all-gather of the updated parameters;
* "zero2": the gradients are sharded too, so a rank cannot keep a full gradient to accumulate
  into: a reduce-scatter after EVERY micro-batch, then one all-gather of the parameters;
* "zero3": the parameters are sharded too: every micro-batch all-gathers them for its forward
  and again for its backward, and reduce-scatters the gradients;
* "parameter_server": every worker sends its Ψ gradients to rank 0 once per step and gets the
  parameters back (give a worker's count, rank 0 is not asked).

Write ``elements_sent(psi, n, strategy, k=1)`` returning a number. With n = 1 nothing is
sent. Check: ZeRO-1 and ZeRO-2 with k = 1 send as much as DDP; ZeRO-3 1.5× as much. The
grader also tries Ψ, n and k of its own, drawn from the seed it prints.

Not allowed (the grader looks at what your code calls or imports): minidist.estimate.
Helpers of your own may have any name.
"""


def elements_sent(psi, n, strategy, k=1):
    raise NotImplementedError
'''

HINTS = [
    "Write r = (n - 1) / n once: a reduce-scatter or an all-gather of Ψ sends r·Ψ, an all-reduce 2·r·Ψ.",
    "Count the collectives per step: DDP and ZeRO-1 once per step whatever k, ZeRO-2's reduce-scatter k times, "
    "ZeRO-3's three collectives k times.",
    "The parameter server is no ring: a worker sends its Ψ gradients once, n plays no part (as long as n > 1).",
]

STRATEGIES = (DDP, ZERO1, ZERO2, ZERO3, PARAMETER_SERVER)


def reference():
    class Reference:
        @staticmethod
        def elements_sent(psi, n, strategy, k=1):
            return dp_comm_elements(psi, n, strategy, k)["sent"]
    return Reference


def _model(psi, n, strategy, k, ring=True, accumulate=None, zero3_gathers=2):
    """The volume with one typical mistake switched on (for naming it)."""
    r = (n - 1) / n if ring else 1.0
    per_step = {DDP: 2, ZERO1: 2, ZERO2: 1, ZERO3: 0}
    per_micro = {DDP: 0, ZERO1: 0, ZERO2: 1, ZERO3: zero3_gathers + 1}
    if accumulate == "every":
        per_step, per_micro = {s: 0 for s in per_step}, {DDP: 2, ZERO1: 2, ZERO2: 2, ZERO3: zero3_gathers + 1}
    elif accumulate == "once":
        per_micro = {s: 0 for s in per_micro}
        per_step = {DDP: 2, ZERO1: 2, ZERO2: 2, ZERO3: zero3_gathers + 1}
    if strategy == PARAMETER_SERVER:
        return psi if n > 1 else 0.0
    return r * psi * (per_step[strategy] + k * per_micro[strategy])


MISTAKES = [
    ({"ring": False}, "you count whole messages of Ψ: a ring collective sends (n−1)/n of the message per rank"),
    ({"accumulate": "once"}, "you count every collective once per step: ZeRO-2 reduce-scatters after every "
                             "micro-batch, ZeRO-3 gathers and reduce-scatters every micro-batch"),
    ({"accumulate": "every"}, "you count every collective once per micro-batch: DDP and ZeRO-1 accumulate "
                              "gradients locally and communicate once per step"),
    ({"zero3_gathers": 1}, "ZeRO-3 all-gathers the parameters twice per micro-batch (forward and backward), "
                           "then reduce-scatters the gradients: 3·(n−1)/n·Ψ"),
]


def _run(sol, psi, n, strategy, k, what):
    got = sol.elements_sent(psi, n, strategy, k)
    want = reference().elements_sent(psi, n, strategy, k)
    try:
        got = float(got)
    except (TypeError, ValueError):
        raise Wrong(f"{what}: return a number of elements, got {type(got).__name__}") from None
    if abs(got - want) <= 1e-9 * max(abs(want), 1.0):
        return
    why = next((text for kw, text in MISTAKES
                if abs(got - _model(psi, n, strategy, k, **kw)) <= 1e-9 * max(abs(got), 1.0)), "")
    if not why and n > 1 and strategy != PARAMETER_SERVER:
        why = f"in units of (n−1)/n·Ψ yours is {got / ((n - 1) / n * psi):.4g}, expected {want / ((n - 1) / n * psi):.4g}"
    raise Wrong(f"{what}: Ψ = {psi:g}, n = {n}, {strategy!r}, k = {k}: {expected_got(want, got)} elements"
                + (f" — {why}" if why else "") + ".")


def _check(cases, what):
    def check(sol):
        for psi, n, strategy, k in cases:
            _run(sol, psi, n, strategy, k, what)
    return check


def held_out(sol, rng):
    """Every strategy, Ψ from 10**6 to 10**11, n from 1 to 512, k from 1 to 8."""
    for strategy in STRATEGIES:
        for _ in range(2):
            _run(sol, float(rng.integers(10 ** 6, 10 ** 11)), int(rng.choice([1, 2, 3, 7, 64, 512])), strategy,
                 int(rng.integers(1, 9)), "held out")


CHECKS = [
    ("DDP: one all-reduce, 2(n−1)/n·Ψ", _check([(7.5e9, 64, DDP, 1), (1e6, 2, DDP, 1)], "DDP")),
    ("ZeRO-1 and ZeRO-2 send what DDP sends (k = 1)", _check([(7.5e9, 64, ZERO1, 1), (7.5e9, 64, ZERO2, 1)], "ZeRO-1/2")),
    ("ZeRO-3: 3(n−1)/n·Ψ, 1.5× DDP", _check([(7.5e9, 64, ZERO3, 1)], "ZeRO-3")),
    ("gradient accumulation, k = 4: who communicates every micro-batch",
     _check([(1e9, 8, s, 4) for s in (DDP, ZERO1, ZERO2, ZERO3)], "k = 4")),
    ("parameter server: a worker sends Ψ; n = 1 sends nothing",
     _check([(1e9, 8, PARAMETER_SERVER, 1), (1e9, 1, PARAMETER_SERVER, 1), (1e9, 1, DDP, 1), (1e9, 1, ZERO3, 2)],
            "edge cases")),
    ("held out: Ψ, n and k of the grader's, every strategy", held_out),
]
