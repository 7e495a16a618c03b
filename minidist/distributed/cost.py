"""Analytic α-β cost of every collective algorithm (Thakur, Rabenseifner & Gropp 2005).

Hockney's model: a message of ``m`` bytes costs ``α + m·β⁻¹`` (``α`` latency in s, ``β``
bandwidth in bytes/s — :meth:`minidist.device.DeviceSpec.message_time`). An algorithm
is then two numbers: how many messages lie on its critical path (the α term) and how many
bytes (the β term)::

    cost.time("all_reduce", "ring", nbytes=4e6, p=8, spec="A100-80GB-NVLink")
    cost.terms("all_reduce", "ring", 4e6, 8)   # (14, 7e6): 2(p−1) latencies, 2(p−1)/p·n bytes

Reductions are free (γ = 0), every rank has one outgoing port and may receive at the same
time. ``n`` is the bytes of the full vector (all-reduce, reduce-scatter input, broadcast,
reduce), of the gathered result (all-gather, gather/scatter) or of one rank's blocks
(all-to-all). The formulas are exact for the simulation when ``p`` is a power of two and
``p`` divides the element count; otherwise padding and MPICH's fold add a little
(``+2·(α + n/β)`` for folded recursive doubling, as written below).

``SENT`` gives the textbook bytes *sent by the busiest rank* — what tests compare with the
message log — and ``FORMULA`` the same as text for tables.
"""
from __future__ import annotations

import math

from ..device import get_spec


def _lg(p):                 # ⌈log2 p⌉: rounds of a binomial tree / Bruck / dissemination
    return math.ceil(math.log2(p)) if p > 1 else 0


def _pof2(p):
    return 1 << (p.bit_length() - 1)


def _fold(p):               # 1 if MPICH's fold is needed (p not a power of two)
    return int(p != _pof2(p))


def _tree_depth(p):         # depth of the binary heap tree 0 → {1, 2} → {3..6} …
    return (p.bit_length() - 1) if p > 1 else 0


TREE_SEGMENTS = 4           # the pipelining of all_reduce(algorithm="tree")


def _tree_stages(p):
    return 2 * min(2, p - 1) * (_tree_depth(p) + TREE_SEGMENTS - 1)

# (op, algorithm) -> (number of α on the critical path, bytes on the critical path)
TERMS = {
    ("all_reduce", "ring"): lambda n, p: (2 * (p - 1), 2 * (p - 1) / p * n),
    ("all_reduce", "recursive_doubling"): lambda n, p: (
        math.log2(_pof2(p)) + 2 * _fold(p), (math.log2(_pof2(p)) + 2 * _fold(p)) * n),
    ("all_reduce", "rabenseifner"): lambda n, p: (
        2 * math.log2(_pof2(p)) + 2 * _fold(p), 2 * (p - 1) / p * n + 2 * _fold(p) * n),
    ("all_reduce", "reduce_broadcast"): lambda n, p: (2 * _lg(p), 2 * _lg(p) * n),
    # pipelined binary tree, an upper bound: k segments of n/k, D levels; a node with c
    # children receives (up) and sends (down) c segments per stage: 2·c·(D + k − 1) stages
    ("all_reduce", "tree"): lambda n, p: (
        _tree_stages(p), _tree_stages(p) * n / TREE_SEGMENTS),
    ("reduce_scatter", "ring"): lambda n, p: (p - 1, (p - 1) / p * n),
    ("reduce_scatter", "recursive_halving"): lambda n, p: (
        math.log2(_pof2(p)) + 2 * _fold(p), (p - 1) / p * n + _fold(p) * (n + n / p)),
    ("reduce_scatter", "pairwise"): lambda n, p: (p - 1, (p - 1) / p * n),
    ("all_gather", "ring"): lambda n, p: (p - 1, (p - 1) / p * n),
    ("all_gather", "recursive_doubling"): lambda n, p: (
        math.log2(_pof2(p)) + 2 * _fold(p), (p - 1) / p * n + _fold(p) * (n + n / p)),
    ("all_gather", "bruck"): lambda n, p: (_lg(p), (p - 1) / p * n),
    ("broadcast", "linear"): lambda n, p: (p - 1, (p - 1) * n),
    ("broadcast", "binomial"): lambda n, p: (_lg(p), _lg(p) * n),
    ("broadcast", "scatter_allgather"): lambda n, p: (_lg(p) + p - 1, 2 * (p - 1) / p * n),
    ("reduce", "linear"): lambda n, p: (p - 1, (p - 1) * n),
    ("reduce", "binomial"): lambda n, p: (_lg(p), _lg(p) * n),
    ("scatter", "linear"): lambda n, p: (p - 1, (p - 1) / p * n),
    ("scatter", "binomial"): lambda n, p: (_lg(p), (p - 1) / p * n),
    ("gather", "linear"): lambda n, p: (p - 1, (p - 1) / p * n),
    ("gather", "binomial"): lambda n, p: (_lg(p), (p - 1) / p * n),
    ("all_to_all", "pairwise"): lambda n, p: (p - 1, (p - 1) / p * n),
    ("all_to_all", "bruck"): lambda n, p: (_lg(p), _lg(p) * n / 2),
    ("barrier", "dissemination"): lambda n, p: (_lg(p), 0.0),
}

# (op, algorithm) -> (bytes sent by the busiest rank, as a function and as text)
SENT = {
    ("all_reduce", "ring"): (lambda n, p: 2 * (p - 1) / p * n, "2(p-1)/p·n"),
    ("all_reduce", "recursive_doubling"): (lambda n, p: math.log2(p) * n, "log2(p)·n"),
    ("all_reduce", "rabenseifner"): (lambda n, p: 2 * (p - 1) / p * n, "2(p-1)/p·n"),
    ("all_reduce", "reduce_broadcast"): (lambda n, p: _lg(p) * n, "log2(p)·n"),
    ("reduce_scatter", "ring"): (lambda n, p: (p - 1) / p * n, "(p-1)/p·n"),
    ("reduce_scatter", "recursive_halving"): (lambda n, p: (p - 1) / p * n, "(p-1)/p·n"),
    ("reduce_scatter", "pairwise"): (lambda n, p: (p - 1) / p * n, "(p-1)/p·n"),
    ("all_gather", "ring"): (lambda n, p: (p - 1) / p * n, "(p-1)/p·n"),
    ("all_gather", "recursive_doubling"): (lambda n, p: (p - 1) / p * n, "(p-1)/p·n"),
    ("all_gather", "bruck"): (lambda n, p: (p - 1) / p * n, "(p-1)/p·n"),
    ("broadcast", "linear"): (lambda n, p: (p - 1) * n, "(p-1)·n (root)"),
    ("broadcast", "binomial"): (lambda n, p: _lg(p) * n, "log2(p)·n (root)"),
    ("broadcast", "scatter_allgather"): (lambda n, p: 2 * (p - 1) / p * n, "2(p-1)/p·n (root)"),
    ("reduce", "linear"): (lambda n, p: n, "n"),
    ("reduce", "binomial"): (lambda n, p: n, "n"),
    ("all_to_all", "pairwise"): (lambda n, p: (p - 1) / p * n, "(p-1)/p·n"),
    ("all_to_all", "bruck"): (lambda n, p: math.log2(p) * n / 2, "log2(p)·n/2"),
}
FORMULA = {key: text for key, (_, text) in SENT.items()}


def terms(op: str, algorithm: str, nbytes: float, p: int) -> tuple[float, float]:
    """``(number of α, bytes)`` on the critical path of ``op``/``algorithm`` on ``p`` ranks."""
    if p <= 1:
        return 0.0, 0.0
    try:
        return TERMS[op, algorithm](nbytes, p)
    except KeyError:
        raise ValueError(f"no cost model for {op}[{algorithm}]; known: {sorted(TERMS)}") from None


def time(op: str, algorithm: str, nbytes: float, p: int, spec=None, *, alpha=None, beta=None) -> float:
    """Predicted seconds: ``L·α + B/β`` with α, β from a device preset/spec or given."""
    s = get_spec(spec)
    a = s.alpha if alpha is None else alpha
    b = s.beta if beta is None else beta
    lat, nb = terms(op, algorithm, nbytes, p)
    return lat * a + nb / b


def bytes_sent(op: str, algorithm: str, nbytes: float, p: int) -> float:
    """Textbook bytes sent by the busiest rank (power-of-two p, p dividing n)."""
    return SENT[op, algorithm][0](nbytes, p) if p > 1 else 0.0


def crossover(op: str, algo_a: str, algo_b: str, p: int, spec=None, lo=8, hi=1 << 32) -> float | None:
    """Message size (bytes) above which ``algo_b`` beats ``algo_a`` (bisection), or None."""
    def diff(n):
        return time(op, algo_a, n, p, spec) - time(op, algo_b, n, p, spec)
    if (diff(lo) > 0) == (diff(hi) > 0):
        return None
    for _ in range(100):
        mid = math.sqrt(lo * hi)
        if (diff(mid) > 0) == (diff(lo) > 0):
            lo = mid
        else:
            hi = mid
    return hi
