"""Exercise: the 1F1B pipeline schedule as data (PipeDream-Flush, Narayanan et al. 2021).

Reference: ``minidist.parallel.pipeline.one_f_one_b``. The student's action lists are checked
with minidist's own validator and simulator (:mod:`minidist.parallel.pipeline.schedule`, F = 1, B = 2);
the helpers here are shared with :mod:`.zb_h1_split`.
"""
from __future__ import annotations

import operator
import re

import numpy as np

from ..defaults import ONE_F_ONE_B
from ..parallel.pipeline import Action, Schedule, ScheduleError, validate
from ..parallel.pipeline.one_f_one_b import one_f_one_b
from .grading import Wrong

NAME = "pipeline_1f1b"
TOPIC = "pipeline"
TITLE = "1F1B as data: every rank's warm-up, steady state and cool-down"
NOTEBOOK = "06_pipeline_schedules"
FUNCTIONS = ("schedule_1f1b",)
FORBIDDEN = ("minidist.parallel.pipeline",)      # minidist's own schedules (its simulator checks yours)

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

With a forward taking one unit and a backward two (it computes the gradients of both the
input and the weights; the grader's clock runs F = 1, B = 2), the bubble (idle share of the
step) is (p−1)/(m+p−1), the same as GPipe's — whatever the two times, in fact — but rank r
holds at most min(p−r, m) micro-batches at once instead of m.

Write ``schedule_1f1b(p, m)`` returning a list of p lists: element r is rank r's program,
a list of ("F", i) and ("B", i) pairs — forward or backward of micro-batch i on stage r —
in the order rank r runs them. Example, p = 2, m = 3:
    [[("F", 0), ("F", 1), ("B", 0), ("F", 2), ("B", 1), ("B", 2)],
     [("F", 0), ("B", 0), ("F", 1), ("B", 1), ("F", 2), ("B", 2)]]
The grader runs your lists on minidist's schedule simulator (a rank waits for its inputs,
like the real executor's blocking receives) for p in 2, 3, 4, 8, and for more (p, m) of its
own — m smaller than, equal to and larger than p — drawn from the seed it prints.

Not allowed (the grader looks at what your code calls or imports): minidist.parallel.pipeline
(minidist's own schedules). Helpers of your own may have any name.
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


OP_WORDS = {"F": "forward", "B": "backward", "W": "weight-gradient pass (W)"}


def action_words(text: str) -> str:
    """minidist's short action names (``F5s0``; ``{0: 'B0s0'}``) in words: "the forward of
    micro-batch 5 on stage 0"; "rank 0 waits to run the backward of micro-batch 0"."""
    def one(match):
        return f"the {OP_WORDS[match[1]]} of micro-batch {match[2]} on stage {match[3]}"
    text = re.sub(r"\{([^{}]*)\}", lambda m: "; ".join(
        f"rank {r} waits to run {v}" for r, v in re.findall(r"(\d+): '([^']*)'", m[1])), text)
    text = re.sub(r"\b([FBW])(\d+)s(\d+)\b", one, text)
    text = re.sub(r"\b([FBW]) of micro-batch (\d+) on chunk (\d+)",
                  lambda m: f"the {OP_WORDS[m[1]]} of micro-batch {m[2]} on stage {m[3]}", text)
    return text.replace("every rank waits for an input that never comes: ", "every rank waits for an input that "
                                                                            "never comes — ")


def _micro_batch(item) -> int | None:
    """The micro-batch of an action as a Python int (a NumPy integer is one: np.arange gives
    them), or None when it is no integer (a bool, a float, a string) or the item no pair."""
    if not isinstance(item, (list, tuple)) or len(item) != 2 or isinstance(item[1], (bool, np.bool_)):
        return None
    try:
        return operator.index(item[1])
    except TypeError:
        return None


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
            micro = _micro_batch(item)
            if not (isinstance(item, (list, tuple)) and len(item) == 2 and item[0] in ops and micro is not None):
                raise Wrong(f"{where}: rank {r}'s program holds {item!r}; each action is a pair (op, micro-batch) "
                            f"with op one of {', '.join(repr(o) for o in ops)} and the micro-batch an integer")
            acts.append(Action(item[0], micro, r))
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
        text = action_words(text)
        raise Wrong(f"p={s.ranks}, m={s.micro_batches}: {text}" + (f".\n{extra}" if extra else "")) from None


def unit_time_run(s: Schedule):
    """The student's schedule on the clock F = B = W = 1 (:func:`simulate`; a backward not split
    into B and W takes 2), or :class:`Wrong` when it is not a valid program (the first check
    says why)."""
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


STEADY_B_FIRST = ("Your warm-ups are the statement's min(p−r−1, m) forwards ({got}), but your steady state then "
                  "starts with a backward: each of its cycles runs the forward of the next micro-batch FIRST, then "
                  "the backward of the oldest — so min(p−r, m) forwards come before rank r's first backward")


def _explain(s: Schedule, text: str) -> str:
    p, m = s.ranks, s.micro_batches
    got = forwards_before_first_backward(s)
    want = [min(p - r, m) for r in range(p)]
    if "deadlock" in text and got != want and got[0] < got[-1]:
        return (f"Your ranks run {got} forwards before their first backward: reversed. 1F1B runs min(p−r, m) = "
                f"{want} there — the first stage the most, because the backward of micro-batch 0 reaches rank r "
                f"only after the forwards of ranks r+1 … p−1 and the backwards that come back")
    if "deadlock" in text and got == [min(p - r - 1, m) for r in range(p)]:
        return STEADY_B_FIRST.format(got=got)
    if "deadlock" in text and got != want:
        r = next(r for r in range(p) if got[r] != want[r])
        return (f"Rank {r} runs {got[r]} forwards before its first backward; 1F1B runs min(p−r, m) = {want[r]} "
                f"there (all ranks: {want}, yours: {got})")
    if "deadlock" in text:
        return ("The number of forwards before each rank's first backward is right; the deadlock comes later: in "
                "the steady state rank r runs the forward of the next micro-batch first, then the backward of the "
                "oldest one, until its forwards run out")
    if "missing" in text and "B of" in text:
        return "Is the cool-down there? After the steady state each rank still owes the backwards of its warm-up"
    return ""


def _valid(sol, sizes=SIZES) -> None:
    for p, m in sizes:
        check_valid(to_schedule(sol.schedule_1f1b(p, m), ONE_F_ONE_B, p, m, "FB"), _explain)


def _warmup(sol, sizes=SIZES) -> None:
    for p, m in sizes:
        s = to_schedule(sol.schedule_1f1b(p, m), ONE_F_ONE_B, p, m, "FB")
        got = forwards_before_first_backward(s)
        want = [min(p - r, m) for r in range(p)]
        if got == want:
            continue
        why = ("that is GPipe's order (every forward before any backward): 1F1B starts backwards as soon "
               "as micro-batch 0 comes back" if got == [m] * p else
               "one forward too many on every rank: p−r+1 instead of p−r" if got == [min(w + 1, m) for w in want]
               else STEADY_B_FIRST.format(got=got) if got == [min(p - r - 1, m) for r in range(p)]
               else "reversed: the first stage runs the most forwards, because micro-batch 0's backward reaches rank "
                    "r only after the forwards of ranks r+1 … p−1" if got[0] < got[-1]
               else "the first backward of rank r can run as soon as micro-batch 0's gradient has come back from "
                    "the last stage")
        r = next(r for r in range(p) if got[r] != want[r])
        raise Wrong(f"p={p}, m={m}: rank {r} runs {got[r]} forward{'s' * (got[r] != 1)} before its first backward, "
                    f"1F1B runs min(p−r, m) = {want[r]} (all ranks: {got}, expected {want}): {why}")


def _bubble(sol, sizes=SIZES) -> None:
    for p, m in sizes:
        s = to_schedule(sol.schedule_1f1b(p, m), ONE_F_ONE_B, p, m, "FB")
        got, want = unit_time_run(s).bubble_fraction, (p - 1) / (m + p - 1)
        if abs(got - want) > 1e-9:
            raise Wrong(f"p={p}, m={m}: with F = 1 and B = 2 units (the whole backward) your bubble is {got:.4f}; "
                        f"1F1B's is (p−1)/(m+p−1) = {want:.4f}: a rank waits where it could work")


def _memory(sol, sizes=SIZES) -> None:
    for p, m in sizes:
        s = to_schedule(sol.schedule_1f1b(p, m), ONE_F_ONE_B, p, m, "FB")
        got = unit_time_run(s).in_flight
        want = [min(p - r, m) for r in range(p)]
        for r in range(p):
            if got[r] != want[r]:
                raise Wrong(f"p={p}, m={m}: rank {r} holds up to {got[r]} micro-batches' activations at once; "
                            f"1F1B holds min(p−r, m) = {want[r]} (each backward frees the oldest forward's)")


def held_out(sol, rng):
    """(p, m) of the grader's: m below, at and above p, on 2 to 8 ranks."""
    sizes = []
    for _ in range(3):
        p = int(rng.integers(2, 9))
        sizes.append((p, int(rng.integers(1, 3 * p + 1))))
    for check in (_valid, _warmup, _bubble, _memory):
        check(sol, sizes)


CHECKS = [
    ("a valid program: every F and B once, no deadlock (p = 2, 3, 4, 8)", _valid),
    ("min(p−r, m) forwards before rank r's first backward (warm-up, then the steady state's first forward)",
     _warmup),
    ("bubble (p−1)/(m+p−1) with F = 1, B = 2", _bubble),
    ("peak in flight min(p−r, m) on rank r", _memory),
    ("held out: (p, m) of the grader's, m below, at and above p", held_out),
]
