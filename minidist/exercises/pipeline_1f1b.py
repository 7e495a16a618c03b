"""Exercise: the 1F1B pipeline schedule as data (PipeDream-Flush, Narayanan et al. 2021).

Reference: ``minidist.parallel.pipeline.one_f_one_b``. The student's action lists are checked
with minidist's own validator and unit-time simulator (:mod:`minidist.parallel.pipeline.schedule`);
the helpers here are shared with :mod:`.zb_h1_split`.
"""
from __future__ import annotations

from ..defaults import ONE_F_ONE_B
from ..parallel.pipeline import Action, Schedule, ScheduleError, validate
from ..parallel.pipeline.one_f_one_b import one_f_one_b
from .grading import Wrong

NAME = "pipeline_1f1b"
TOPIC = "pipeline"
TITLE = "1F1B as data: every rank's warm-up, steady state and cool-down"
NOTEBOOK = "06_pipeline_schedules"
FUNCTIONS = ("schedule_1f1b",)
FORBIDDEN = ("one_f_one_b", "build_schedule", "BUILDERS")

STUB = '''"""1F1B (PipeDream-Flush; Narayanan et al. 2021), the default pipeline schedule of
Megatron-LM and DeepSpeed, written as DATA: one list of actions per rank.

The model is cut into p stages; rank r holds stage r. A step runs m micro-batches. Each
micro-batch needs a forward on every stage, in order 0, 1, …, p−1 (rank r needs the
activation rank r−1 sends), then a backward on every stage, in order p−1, …, 0 (rank r
needs the gradient rank r+1 sends back; on the last rank the backward starts from the loss).

1F1B keeps at most p micro-batches' activations alive on any rank. Rank r runs

1. warm-up: p−r−1 forwards (fewer if m is smaller) — exactly enough that the backward of
   micro-batch 0 arrives when they are done;
2. steady state: one forward of the next micro-batch, then one backward of the oldest,
   repeated;
3. cool-down: the backwards still owed.

With every forward and backward taking one unit, the bubble (idle share of the step) is
(p−1)/(m+p−1), the same as GPipe's, but rank r holds at most min(p−r, m) micro-batches
at once instead of m.

Write ``schedule_1f1b(p, m)`` returning a list of p lists: element r is rank r's program,
a list of ("F", i) and ("B", i) pairs — forward or backward of micro-batch i on stage r —
in the order rank r runs them. Example, p = 2, m = 3:
    [[("F", 0), ("F", 1), ("B", 0), ("F", 2), ("B", 1), ("B", 2)],
     [("F", 0), ("B", 0), ("F", 1), ("B", 1), ("F", 2), ("B", 2)]]
The grader runs your lists on minidist's schedule simulator (a rank waits for its inputs,
like the real executor's blocking receives) for p in 2, 3, 4, 8.
"""


def schedule_1f1b(p, m):
    raise NotImplementedError
'''

HINTS = [
    "Rank r's warm-up length is w = min(p - r - 1, m): rank 0 warms up the most, the last rank not at all.",
    "After the warm-up, for k in range(m - w): run F of micro-batch w + k, then B of micro-batch k.",
    "The cool-down runs the backwards of micro-batches m - w … m - 1.",
    "If the grader reports a deadlock, look at the rank it names: it waits for an input that a "
    "neighbour will only send after this rank moves on.",
]

SIZES = [(2, 1), (2, 3), (3, 2), (3, 7), (4, 3), (4, 4), (4, 8), (8, 5), (8, 16)]


def reference():
    class Reference:
        @staticmethod
        def schedule_1f1b(p, m):
            return [[(a.op, a.micro_batch) for a in acts] for acts in one_f_one_b(p, m).actions]
    return Reference


def to_schedule(got, name: str, p: int, m: int, ops: str) -> Schedule:
    """The student's lists of (op, micro-batch) pairs as a one-chunk-per-rank Schedule, or
    :class:`Wrong` saying what is malformed."""
    where = f"p={p}, m={m}"
    if not isinstance(got, (list, tuple)) or len(got) != p:
        raise Wrong(f"{where}: return a list of {p} lists (one program per rank), got "
                    f"{type(got).__name__}{f' of length {len(got)}' if isinstance(got, (list, tuple)) else ''}")
    actions = []
    for r, prog in enumerate(got):
        acts = []
        for item in prog:
            if not (isinstance(item, (list, tuple)) and len(item) == 2 and item[0] in ops
                    and isinstance(item[1], int) and not isinstance(item[1], bool)):
                raise Wrong(f"{where}: rank {r}'s program holds {item!r}; each action is a pair (op, micro-batch) "
                            f"with op one of {', '.join(repr(o) for o in ops)}")
            acts.append(Action(item[0], item[1], r))
        actions.append(acts)
    return Schedule(name, p, m, list(range(p)), actions)


def check_valid(s: Schedule, explain) -> None:
    """minidist's validator on the student's schedule; ``explain(s, error)`` may add the
    reason of a typical mistake to its message."""
    try:
        validate(s)
    except ScheduleError as e:
        text = str(e).replace(f"{s.name}: ", "", 1)
        extra = explain(s, text)
        raise Wrong(f"p={s.ranks}, m={s.micro_batches}: {text}" + (f".\n{extra}" if extra else "")) from None


def unit_time_run(s: Schedule):
    """The student's schedule on the unit-time clock (:func:`simulate`), or :class:`Wrong` when
    it is not a valid program (the first check says why)."""
    try:
        return validate(s)
    except ScheduleError:
        raise Wrong(f"p={s.ranks}, m={s.micro_batches}: not measured — the program is not valid "
                    f"(see the first check)") from None


def forwards_before_first_backward(s: Schedule) -> list:
    """Per rank, how many forwards it runs before its first backward."""
    out = []
    for acts in s.actions:
        ops = [a.op for a in acts]
        out.append(ops.index("B") if "B" in ops else ops.count("F"))
    return out


def _explain(s: Schedule, text: str) -> str:
    p = s.ranks
    warm = [w - 1 for w in forwards_before_first_backward(s)]     # the steady state adds one forward
    if "deadlock" in text and warm[0] < warm[-1]:
        return (f"Your warm-up lengths per rank are {warm}: reversed. The first stage must warm up the most: "
                f"rank r runs p−r−1 = {[p - r - 1 for r in range(p)]} forwards, because the backward of "
                f"micro-batch 0 reaches rank r only after the forwards of ranks r+1 … p−1 and the backwards "
                f"that come back")
    if "deadlock" in text:
        return ("A rank waits for a forward its left neighbour has not run, or for a backward its right "
                "neighbour has not run: compare your warm-up lengths with p−r−1")
    if "missing" in text and "B of" in text:
        return "Is the cool-down there? After the steady state each rank still owes the backwards of its warm-up"
    return ""


def _valid(sol) -> None:
    for p, m in SIZES:
        check_valid(to_schedule(sol.schedule_1f1b(p, m), ONE_F_ONE_B, p, m, "FB"), _explain)


def _warmup(sol) -> None:
    for p, m in SIZES:
        s = to_schedule(sol.schedule_1f1b(p, m), ONE_F_ONE_B, p, m, "FB")
        got = forwards_before_first_backward(s)
        want = [min(p - r, m) for r in range(p)]
        if got == want:
            continue
        why = ("that is GPipe's order (every forward before any backward): 1F1B starts backwards as soon "
               "as micro-batch 0 comes back" if got == [m] * p else
               "your warm-up is one forward too long (p−r instead of p−r−1)" if got == [min(w + 1, m) for w in want]
               else "1F1B's warm-up on rank r is min(p−r−1, m) forwards, then the steady state's first forward")
        r = next(r for r in range(p) if got[r] != want[r])
        raise Wrong(f"p={p}, m={m}: rank {r} runs {got[r]} forward{'s' * (got[r] != 1)} before its first backward, "
                    f"expected min(p−r, m) = {want[r]} (all ranks: {got}, expected {want}): {why}")


def _bubble(sol) -> None:
    for p, m in SIZES:
        s = to_schedule(sol.schedule_1f1b(p, m), ONE_F_ONE_B, p, m, "FB")
        got, want = unit_time_run(s).bubble_fraction, (p - 1) / (m + p - 1)
        if abs(got - want) > 1e-9:
            raise Wrong(f"p={p}, m={m}: with F = 1 and B = 2 units (the whole backward) your bubble is {got:.4f}; "
                        f"1F1B's is (p−1)/(m+p−1) = {want:.4f}: a rank waits where it could work")


def _memory(sol) -> None:
    for p, m in SIZES:
        s = to_schedule(sol.schedule_1f1b(p, m), ONE_F_ONE_B, p, m, "FB")
        got = unit_time_run(s).in_flight
        want = [min(p - r, m) for r in range(p)]
        for r in range(p):
            if got[r] != want[r]:
                raise Wrong(f"p={p}, m={m}: rank {r} holds up to {got[r]} micro-batches' activations at once; "
                            f"1F1B holds min(p−r, m) = {want[r]} (each backward frees the oldest forward's)")


CHECKS = [
    ("a valid program: every F and B once, no deadlock (p = 2, 3, 4, 8)", _valid),
    ("warm-up: min(p−r−1, m) forwards, then the steady state, before rank r's first backward", _warmup),
    ("bubble (p−1)/(m+p−1) with unit times", _bubble),
    ("peak in flight min(p−r, m) on rank r", _memory),
]
