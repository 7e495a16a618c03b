"""Exercise: top-k routing with expert capacity — experts, gates, slots and dropped tokens.

Reference: :func:`minidist.moe.route` and :func:`minidist.moe.capacity` (the router of
:class:`minidist.moe.MoEMLP`), the gates as the MoE layer takes them from the probabilities.
"""
from __future__ import annotations

import numpy as np

from ..moe import capacity as moe_capacity
from ..moe import route as moe_route
from .grading import Wrong, as_array, compare, diagnose, on_case

NAME = "moe_topk_routing"
TOPIC = "mixture of experts"
TITLE = "Top-k routing with capacity: experts, gates, slots, drops"
NOTEBOOK = "12_mixture_of_experts"
FUNCTIONS = ("capacity", "route")
FORBIDDEN_IMPORTS = ("minidist.moe", "minidist.parallel", "scipy", "torch", "jax")

STUB = '''"""Top-k routing with expert capacity (Shazeer et al. 2017; GShard, Lepikhin et al. 2020 §2.2;
Switch Transformers, Fedus et al. 2021 §2.1).

A group of T tokens meets a router: ``probs`` (T, E) is the softmax over E experts of each
token's router logits (each row sums to 1). Every token goes to its k likeliest experts, and
every expert has room for only C tokens of the group.

Write two functions.

``capacity(tokens, k, num_experts, capacity_factor)`` -> int: the slots of each expert,
    C = ceil(capacity_factor · T · k / E).

``route(probs, k, capacity_factor)`` -> ``(expert, gate, slot, dropped)``, four (T, k) arrays:

1. ``expert`` (integers): each token's k experts with the largest probabilities, best first;
   when two probabilities are equal the LOWER expert index comes first.
2. ``gate`` (floats): the weight of each choice in the token's output. Top-1 (Switch):
   gate = the chosen probability p. Top-k with k ≥ 2 (GShard): the chosen probabilities
   renormalised over the k choices, g_i = p_i / Σ_chosen p.
3. ``slot`` (integers): the position of each assignment (t, e) in expert e's buffer, given
   choice-major: first every token's 1st choice in token order (t = 0, 1, …, T−1), then every
   token's 2nd choice in token order, … An assignment's slot is the number of assignments to
   the same expert that came before it in that order.
4. ``dropped`` (booleans): slot ≥ C — the expert is full; that assignment contributes nothing
   (the block's residual connection carries the token on).

Example: T = 3, E = 2, k = 1, capacity_factor 1.0 -> C = ceil(1.5) = 2; probs rows
[.9,.1], [.6,.4], [.7,.3]: every token picks expert 0, slots 0, 1, 2; the third is dropped.

Use NumPy only: not allowed are minidist.moe and minidist.parallel (minidist's own router),
scipy, torch and jax. The grader also tries groups of its own (other T, E, k, ties,
float32 and float64).
"""
import numpy as np


def capacity(tokens, k, num_experts, capacity_factor):
    """C = ceil(capacity_factor · tokens · k / num_experts)."""
    raise NotImplementedError


def route(probs, k, capacity_factor):
    """(expert, gate, slot, dropped), each (T, k)."""
    raise NotImplementedError
'''

HINTS = [
    "np.argsort(-probs, axis=-1, kind=\"stable\") orders each row from the largest probability down, "
    "equal ones in index order; keep the first k columns.",
    "Walk the assignments in choice-major order: for c in range(k), for t in range(T); keep a counter "
    "per expert — the counter is the slot, then add one.",
    "C counts the k choices of every token: with k = 2 an expert has room for twice as many assignments.",
]


def _gates(probs, expert, k):
    gate = np.take_along_axis(probs, expert, axis=-1)
    return gate / gate.sum(axis=-1, keepdims=True) if k > 1 else gate


def _route(probs, k, cf):
    r = moe_route(np.asarray(probs, dtype=np.float64), k, cf)
    return r.expert, _gates(np.asarray(probs), r.expert, k), r.slot, ~r.kept


def reference():
    class Reference:
        @staticmethod
        def capacity(tokens, k, num_experts, capacity_factor):
            return moe_capacity(tokens, k, num_experts, capacity_factor)

        @staticmethod
        def route(probs, k, capacity_factor):
            return _route(probs, k, capacity_factor)
    return Reference


# -- typical mistakes ---------------------------------------------------------------------------
def _ties_high(probs, k, cf):
    return np.argsort(probs, axis=-1, kind="stable")[:, ::-1][:, :k]


def _token_major_slots(probs, k, cf):
    expert = _route(probs, k, cf)[0]
    counts, slot = {}, np.zeros_like(expert)
    for t in range(expert.shape[0]):
        for c in range(k):
            e = int(expert[t, c])
            slot[t, c] = counts.get(e, 0)
            counts[e] = slot[t, c] + 1
    return slot


CAPACITY_MISTAKES = [
    (lambda T, k, E, cf: int(np.floor(cf * T * k / E)), "you rounded down: C = ceil(capacity_factor · T · k / E) "
                                                       "rounds UP (an expert never has fewer slots than its share)"),
    (lambda T, k, E, cf: int(np.ceil(cf * T / E)), "your capacity forgot k: each token makes k assignments, so "
                                                   "C = ceil(capacity_factor · T · k / E)"),
    (lambda T, k, E, cf: int(round(cf * T * k / E)), "you rounded to the nearest integer: C rounds UP (ceil)"),
]
EXPERT_MISTAKES = [
    (_ties_high, "on equal probabilities you put the HIGHER expert index first; ties go to the lower index "
                 "(a stable sort on −probs)"),
    (lambda p, k, cf: np.argsort(p, axis=-1, kind="stable")[:, :k], "you took the k SMALLEST probabilities; "
                                                                    "sort from the largest down"),
]
GATE_MISTAKES = [
    (lambda p, k, cf: np.take_along_axis(p, _route(p, k, cf)[0], axis=-1),
     "your gates are the raw probabilities; with k ≥ 2 (GShard) renormalise them over the k choices: "
     "g_i = p_i / Σ_chosen p"),
    (lambda p, k, cf: (lambda g: g / g.sum(axis=-1, keepdims=True))(np.take_along_axis(p, _route(p, k, cf)[0], -1)),
     "you renormalised a top-1 gate to 1; with k = 1 (Switch) the gate is the probability p itself"),
    (lambda p, k, cf: (lambda g: np.exp(g) / np.exp(g).sum(axis=-1, keepdims=True))(
        np.take_along_axis(p, _route(p, k, cf)[0], -1)),
     "you took a softmax of the chosen probabilities; renormalise them: g_i = p_i / Σ_chosen p"),
]
SLOT_MISTAKES = [
    (_token_major_slots, "you gave the slots token by token (token 0's choices, then token 1's …); the order is "
                         "choice-major: every token's 1st choice first, then every token's 2nd choice"),
]
DROP_MISTAKES = [
    (lambda p, k, cf: _route(p, k, cf)[2] > moe_capacity(p.shape[0], k, p.shape[1], cf),
     "you dropped slot > C; slots run 0 … C−1, so slot ≥ C is dropped"),
    (lambda p, k, cf: _route(p, k, cf)[2] >= int(np.ceil(cf * p.shape[0] / p.shape[1])),
     "your capacity forgot k: C = ceil(capacity_factor · T · k / E)"),
    (lambda p, k, cf: _route(p, k, cf)[2] >= int(np.floor(cf * p.shape[0] * k / p.shape[1])),
     "you rounded the capacity down: C = ceil(capacity_factor · T · k / E)"),
]


def _probs(seed, T, E, dtype=np.float64, ties=False):
    """A group's router probabilities; with ``ties``, rows where two experts share the top value."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(size=(T, E)) * 1.5
    if ties:
        for t in range(0, T, 2):
            a, b = rng.choice(E, size=2, replace=False)
            logits[t, max(a, b)] = logits[t, min(a, b)] = logits[t].max() + 0.5
    p = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return (p / p.sum(axis=-1, keepdims=True)).astype(dtype)


def _call(sol, probs, k, cf, what):
    copy = probs.copy()
    out = sol.route(copy, k, cf)
    if not isinstance(out, (tuple, list)) or len(out) != 4:
        raise Wrong(f"{what}: return the tuple (expert, gate, slot, dropped); you returned {type(out).__name__}"
                    + (f" of length {len(out)}" if isinstance(out, (tuple, list)) else ""))
    if not np.array_equal(copy, probs):
        raise Wrong(f"{what}: your function changed probs; work on a copy")
    return [as_array(x, name) for x, name in zip(out, ("expert", "gate", "slot", "dropped"))]


def _judge(sol, probs, k, cf, what, rtol=1e-12):
    expert, gate, slot, dropped = _call(sol, probs, k, cf, what)
    want = _route(probs, k, cf)
    wide = probs.astype(np.float64)
    for got, w, name, mistakes, tol in ((expert, want[0], "expert", EXPERT_MISTAKES, 0),
                                        (gate, want[1], "gate", GATE_MISTAKES, rtol),
                                        (slot, want[2], "slot", SLOT_MISTAKES, 0),
                                        (dropped, want[3], "dropped", DROP_MISTAKES, 0)):
        try:
            compare(got, w, f"{what}: {name}", rtol=tol, atol=0 if tol == 0 else 1e-12)
        except Wrong as exc:
            why = diagnose(got, mistakes, wide, k, cf, rtol=max(tol, 1e-6), atol=1e-9)
            raise Wrong(f"{exc}" + (f"\nY{why[1:]}." if why else "")) from None


def _describe(probs, k, cf):
    T, E = probs.shape
    return (f"T = {T} tokens, E = {E} experts, k = {k}, capacity_factor {cf:g} "
            f"(C = {moe_capacity(T, k, E, cf)}), {probs.dtype}")


def check_capacity(sol):
    for T, k, E, cf in ((8, 2, 4, 1.0), (10, 1, 4, 1.0), (6, 2, 4, 1.25), (7, 2, 3, 1.5), (16, 1, 8, 0.5),
                        (5, 2, 8, 2.0)):
        got = sol.capacity(T, k, E, cf)
        want = moe_capacity(T, k, E, cf)
        if isinstance(got, bool) or not isinstance(got, (int, np.integer)):
            raise Wrong(f"capacity({T}, {k}, {E}, {cf}): return an integer (a count of slots); got {got!r}")
        if got != want:
            why = diagnose(got, CAPACITY_MISTAKES, T, k, E, cf)
            raise Wrong(f"capacity(T={T}, k={k}, E={E}, capacity_factor={cf}): expected {want}, got {got}"
                        + (f"\nY{why[1:]}." if why else ""))


def _check(seed, T, E, k, cf, ties=False):
    def check(sol):
        probs = _probs(seed, T, E, ties=ties)
        _judge(sol, probs, k, cf, _describe(probs, k, cf))
    return check


def check_example(sol):
    probs = np.array([[.9, .1], [.6, .4], [.7, .3]])
    expert, gate, slot, dropped = _call(sol, probs, 1, 1.0, "the statement's example")
    for got, want, name in ((expert, [[0], [0], [0]], "expert"), (gate, [[.9], [.6], [.7]], "gate"),
                            (slot, [[0], [1], [2]], "slot"), (dropped, [[0], [0], [1]], "dropped")):
        compare(got, np.array(want, dtype=np.float64), f"the statement's example: {name}", rtol=1e-12, atol=1e-12)


def held_out(sol, rng):
    """Groups the statement does not show: T from 1 to 40, E from 2 to 8, k from 1 to 3 (never
    above E), capacity factors 0.5 to 2 (so some groups drop many, others none), ties, float32."""
    for i in range(6):
        E = int(rng.choice([2, 3, 4, 8]))
        k = int(rng.integers(1, min(3, E) + 1))
        T = int(rng.integers(1, 41))
        cf = float(rng.choice([0.5, 1.0, 1.25, 2.0]))
        dtype = (np.float64, np.float32)[i % 2]
        probs = _probs(int(rng.integers(1 << 30)), T, E, dtype, ties=i % 3 == 0)
        what = "held out: " + _describe(probs, k, cf)
        with on_case(sol, what, "the statement promises any T, E and k ≤ E, float32 and float64"):
            _judge(sol, probs, k, cf, what, rtol=1e-5 if dtype == np.float32 else 1e-12)


CHECKS = [
    ("capacity C = ceil(capacity_factor · T · k / E)", check_capacity),
    ("the statement's example (top-1, the third token dropped)", check_example),
    ("top-1 (Switch): experts, gates = p, slots, drops", _check(1, 12, 4, 1, 1.0)),
    ("top-2 (GShard): gates renormalised, slots choice-major", _check(2, 10, 4, 2, 1.0)),
    ("equal probabilities go to the lower expert", _check(3, 8, 5, 2, 1.25, ties=True)),
    ("held out: other groups, ties and float32", held_out),
]
