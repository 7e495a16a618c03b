"""Interleaved 1F1B: Narayanan et al. 2021, "Efficient Large-Scale Language Model Training on
GPU Clusters Using Megatron-LM", §2.2.2 (Megatron-LM's virtual pipeline, torch's
``ScheduleInterleaved1F1B``).

Each rank holds v chunks of L/(p·v) layers, round-robin: chunk s lives on rank s mod p, so a
micro-batch visits every rank v times. Rank r walks through its m·v (micro-batch, chunk)
forwards in groups of p micro-batches per chunk — chunk 0 for micro-batches 0…p−1, then
chunk 1 for the same p, …, then chunk 0 for p…2p−1 — and its backwards in the same order
with the chunks reversed. Warm-up: ``(p−r−1)·2 + (v−1)·p`` forwards (all of them when m = p),
then 1F1B, then cool-down.

The fill and drain are made of chunks v times shorter: bubble (p−1)(T_F+T_B)/v per rank, a
fraction (p−1)/(v·m+p−1) of the step. Rank 0 holds p + (p−1)/v micro-batches' worth of
activations (Korthikanti et al. 2022 §4.2.3) and every micro-batch crosses v times more
stage boundaries. Needs m a multiple of p (Megatron's condition).
"""
from __future__ import annotations

from ...defaults import INTERLEAVED_1F1B
from .schedule import Action, Schedule, check_sizes


def interleaved_1f1b(ranks: int, micro_batches: int, virtual_stages: int = 2) -> Schedule:
    check_sizes(INTERLEAVED_1F1B, ranks, micro_batches, virtual_stages)
    p, m, v = ranks, micro_batches, virtual_stages
    if m % p:
        raise ValueError(f"schedule {INTERLEAVED_1F1B!r} needs micro-batches (gradient_accumulation_steps = {m}) "
                         f"to be a multiple of the pipeline ranks ({p}); use "
                         + (f"{m - m % p} or {m - m % p + p}" if m > p else f"{p}"))
    total = m * v

    def order(k: int, backward: bool) -> tuple:
        """(micro-batch, chunk on this rank) of this rank's k-th forward (or backward)."""
        chunk = (k // p) % v
        return (k // (p * v)) * p + k % p, (v - 1 - chunk) if backward else chunk

    acts = []
    for r in range(p):
        warmup = total if m == p else min((p - r - 1) * 2 + (v - 1) * p, total)
        fwd = [Action("F", i, c * p + r) for i, c in (order(k, False) for k in range(total))]
        bwd = [Action("B", i, c * p + r) for i, c in (order(k, True) for k in range(total))]
        prog = fwd[:warmup]
        for k in range(total - warmup):
            prog += [fwd[warmup + k], bwd[k]]
        prog += bwd[total - warmup:]
        acts.append(prog)
    stage_to_rank = [s % p for s in range(p * v)]
    return Schedule(INTERLEAVED_1F1B, p, m, stage_to_rank, acts)
