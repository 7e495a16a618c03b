"""How a sequence is cut over the context-parallel ranks, and which attention blocks each
rank computes at each step of the ring — as data, before any rank runs.

Two layouts of a sequence of ``s`` positions over ``cp`` ranks::

    contiguous  rank r holds positions [r·s/cp, (r+1)·s/cp)           (one chunk per rank)
    zigzag      the sequence cut into 2·cp chunks of s/(2·cp); rank r holds
                chunks r and 2·cp − 1 − r                            (Megatron-LM's CP,
                                                                       ring-flash-attention)

    s = 16, cp = 4, zigzag:  chunks 0 1 2 3 4 5 6 7  →  rank 0: 0,7  rank 1: 1,6  rank 2: 2,5  rank 3: 3,4

Why zigzag: under a causal mask, query chunk i needs key chunk j only when j ≤ i. With the
contiguous layout the last rank's queries need every key block while rank 0's need only its
own, so in ring attention rank cp − 1 computes cp blocks and rank 0 one: the ring waits
for the slowest. With zigzag every rank pairs an early chunk with a late one and computes
the same 2·cp + 1 half-size blocks (:func:`work`), whatever its place in the ring
(Liu et al. 2023, "Ring Attention with Blockwise Transformers", and Brandon et al. 2023,
"Striped Attention", discuss this imbalance; the zigzag order is Megatron-LM's).

A block of queries (chunk ``qc``) against keys (chunk ``kc``) is, under the causal mask,
``"full"`` (kc < qc: every query sees every key), ``"diagonal"`` (kc = qc: the usual
lower-triangular mask) or ``"skip"`` (kc > qc: nothing to compute) — :func:`block_kind`.
:func:`ring_schedule` lists, per rank and step, the key owner and the blocks computed;
:func:`minidist.parallel.context.ring.ring_attention` executes exactly that list.
"""
from __future__ import annotations

import numpy as np

LAYOUTS = ("zigzag", "contiguous")


def n_chunks(cp: int, layout: str) -> int:
    """How many equal chunks the sequence is cut into: 2·cp (zigzag) or cp (contiguous)."""
    if layout not in LAYOUTS:
        raise ValueError(f"unknown context-parallel layout {layout!r}; choose one of {', '.join(LAYOUTS)}")
    return 2 * cp if layout == "zigzag" else cp


def chunks_of(rank: int, cp: int, layout: str) -> tuple:
    """The chunk indices rank ``rank`` holds, in the order its local positions store them."""
    n_chunks(cp, layout)
    return (rank, 2 * cp - 1 - rank) if layout == "zigzag" else (rank,)


def split_problem(seq: int, cp: int, layout: str) -> str | None:
    """Why a sequence of ``seq`` positions cannot be cut for ``cp`` ranks, or None."""
    n = n_chunks(cp, layout)
    if seq < n:                                  # 0 included: a chunk of no position has nothing to attend
        return (f"the sequence length {seq} is shorter than the {n} chunks ring attention cuts it into "
                f"({layout} layout, cp = {cp}); use at least {n} positions, a multiple of {n}")
    if seq % n == 0:
        return None
    why = "2 · cp chunks (zigzag: rank r holds chunks r and 2·cp − 1 − r)" if layout == "zigzag" else "cp chunks"
    return (f"the sequence length {seq} is not divisible by {n}: ring attention cuts it into {why}; "
            f"use a sequence length that is a multiple of {n}")


def positions(rank: int, cp: int, seq: int, layout: str) -> np.ndarray:
    """The global positions of this rank's tokens, in its local order: (seq/cp,) integers."""
    problem = split_problem(seq, cp, layout)
    if problem:
        raise ValueError(problem)
    c = seq // n_chunks(cp, layout)
    return np.concatenate([np.arange(k * c, (k + 1) * c) for k in chunks_of(rank, cp, layout)])


def block_kind(q_chunk: int, k_chunk: int, causal: bool = True) -> str:
    """"full", "diagonal" or "skip": what the causal mask leaves of (query chunk, key chunk)."""
    if not causal or k_chunk < q_chunk:
        return "full"
    return "diagonal" if k_chunk == q_chunk else "skip"


def ring_schedule(cp: int, layout: str = "zigzag", causal: bool = True) -> list:
    """``schedule[r][step] = (source, [(i, j, kind), …])``: at ``step`` rank r holds the keys
    and values of rank ``source = (r − step) mod cp`` (they move one rank on per step) and
    computes its local query chunk ``i`` against the source's local key chunk ``j``."""
    out = []
    for r in range(cp):
        steps = []
        for step in range(cp):
            src = (r - step) % cp
            blocks = [(i, j, block_kind(qc, kc, causal))
                      for i, qc in enumerate(chunks_of(r, cp, layout))
                      for j, kc in enumerate(chunks_of(src, cp, layout))]
            steps.append((src, [b for b in blocks if b[2] != "skip"]))
        out.append(steps)
    return out


def work(cp: int, layout: str = "zigzag", causal: bool = True) -> np.ndarray:
    """(cp, cp) array: attention work of rank r at step ``step`` in units of one
    (s/(2·cp))² block of scores (a contiguous chunk is two such chunks: four units)."""
    unit = 1 if layout == "zigzag" else 4
    sched = ring_schedule(cp, layout, causal)
    return np.array([[unit * len(blocks) for _, blocks in steps] for steps in sched])
