"""Exercise: Patient Knowledge Distillation's layer maps, PKD-Skip and PKD-Last (Sun et al. 2019, §3.2):
which teacher block each student block learns from.

Reference: ``minidist.distill.losses.pkd_pairs``.
"""
from __future__ import annotations

from ..distill.losses import pkd_pairs
from .grading import Wrong

NAME = "pkd_layer_map"
TOPIC = "distillation"
TITLE = "Patient KD: which teacher block each student block learns from (Skip and Last)"
NOTEBOOK = "08_distillation"
FUNCTIONS = ("pkd_pairs",)
FORBIDDEN = ("minidist.distill",)        # minidist's own distillation code

STUB = '''"""Patient Knowledge Distillation (Sun et al. 2019, "Patient Knowledge Distillation for BERT
Model Compression", §3.2): besides the output distribution, the student's INNER blocks learn
from the teacher's, each student block from one teacher block.

Blocks are numbered from 1. A student of L_s blocks matches its first L_s − 1 blocks (its
last is covered by the output's KD loss) to distinct teacher blocks below the teacher's last
(the teacher has L_t >= L_s blocks):

* PKD-Skip, "skip": student block k learns from teacher block ⌊k · L_t / L_s⌋ — every
  (L_t / L_s)-th block, spread over the whole teacher (12 → 6: blocks 2, 4, 6, 8, 10);
* PKD-Last, "last": student block k learns from teacher block L_t − L_s + k — the teacher's
  last blocks before its own last (12 → 6: blocks 7, 8, 9, 10, 11).

Write ``pkd_pairs(student_layers, teacher_layers, mapping)`` returning the list of pairs
(student block, teacher block), 1-based, in student order: for L_s = 3, L_t = 6, "skip"
gives [(1, 2), (2, 4)]. Use integers only (⌊·⌋ is //). The grader also tries (L_s, L_t) of
its own, where L_s does not divide L_t, drawn from the seed it prints.

Not allowed (the grader looks at what your code calls or imports): minidist.distill.
Helpers of your own may have any name.
"""


def pkd_pairs(student_layers, teacher_layers, mapping):
    raise NotImplementedError
'''

HINTS = [
    "The student blocks are k = 1, 2, …, L_s − 1: range(1, student_layers).",
    "Skip: k * teacher_layers // student_layers (integer division; no float, no round).",
    "Last: teacher_layers - student_layers + k; for k = L_s − 1 that is L_t − 1, the block below the teacher's last.",
]


def reference():
    class Reference:
        pkd_pairs = staticmethod(pkd_pairs)
    return Reference


def _variant(ls, lt, mapping, zero_based=False, include_last=False, rounding=False, last_shift=0):
    """The pairs with one typical mistake switched on (for naming it)."""
    ks = range(1, ls + 1) if include_last else range(1, ls)
    if mapping == "skip":
        pairs = [(k, round(k * lt / ls) if rounding else k * lt // ls) for k in ks]
    else:
        pairs = [(k, lt - ls + k + last_shift) for k in ks]
    return [(s - 1, t - 1) for s, t in pairs] if zero_based else pairs


MISTAKES = [
    ({"zero_based": True}, "your blocks count from 0; PKD numbers blocks from 1 (student block 1 is the first)"),
    ({"include_last": True}, "you also map the student's LAST block: it is covered by the output's KD loss, so only "
                             "blocks 1 … L_s − 1 are matched"),
    ({"rounding": True}, "you round k·L_t/L_s to the nearest block; PKD-Skip takes the floor: k * L_t // L_s"),
    ({"last_shift": 1}, "your PKD-Last blocks are one too high: the last student block k = L_s − 1 maps to L_t − 1, "
                        "the block below the teacher's last (L_t − L_s + k)"),
    ({"last_shift": -1}, "your PKD-Last blocks are one too low: student block k maps to L_t − L_s + k"),
]


def _as_pairs(got, where):
    try:
        return [(int(s), int(t)) for s, t in got]
    except (TypeError, ValueError):
        raise Wrong(f"{where}: return a list of (student block, teacher block) pairs, got {got!r:.80}") from None


def _run(sol, ls, lt, mapping):
    where = f"student of {ls} blocks, teacher of {lt}, {mapping!r}"
    got = _as_pairs(sol.pkd_pairs(ls, lt, mapping), where)
    want = [tuple(p) for p in pkd_pairs(ls, lt, mapping)]
    if got == want:
        return
    why = next((text for kw, text in MISTAKES if got == _variant(ls, lt, mapping, **kw)), "")
    wrong = next((i for i, (g, w) in enumerate(zip(got, want)) if g != w), min(len(got), len(want)))
    detail = (f"pair {wrong + 1} should be {want[wrong]}, yours is {got[wrong]}" if wrong < min(len(got), len(want))
              else f"{len(want)} pairs expected (student blocks 1 … {ls - 1}), you return {len(got)}")
    raise Wrong(f"{where}: {detail}. Expected {want}, got {got}" + (f".\nY{why[1:]}." if why else "."))


def _check(cases):
    def check(sol):
        for ls, lt, mapping in cases:
            _run(sol, ls, lt, mapping)
    return check


def held_out(sol, rng):
    """(L_s, L_t) of the grader's, L_t not a multiple of L_s, both mappings."""
    for i in range(4):
        ls = int(rng.integers(3 if i == 0 else 2, 9))
        rest = 1 if i == 0 else int(rng.integers(1, ls))   # rest 1: k = L_s − 1 lands above a half, rounding shows
        lt = ls * int(rng.integers(1, 4)) + rest             # not a multiple of ls
        for mapping in ("skip", "last"):
            _run(sol, ls, lt, mapping)


CHECKS = [
    ("PKD-Skip, 12 → 6: every other teacher block", _check([(6, 12, "skip")])),
    ("PKD-Last, 12 → 6: the teacher's last blocks below its last", _check([(6, 12, "last")])),
    ("a student of 3 blocks, teachers of 6 and 12, both mappings",
     _check([(3, 6, "skip"), (3, 12, "skip"), (3, 6, "last"), (3, 12, "last")])),
    ("equal depths: block k learns from block k", _check([(4, 4, "skip"), (4, 4, "last")])),
    ("held out: depths that do not divide (⌊k·L_t/L_s⌋)", held_out),
]
