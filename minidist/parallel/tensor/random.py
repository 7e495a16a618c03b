"""Dropout masks under tensor and sequence parallelism: the one-rank mask, sliced.

**Megatron-LM's rule** (``tensor_parallel.random.model_parallel_cuda_manual_seed``): two
generators per rank. The default one gets the *same* seed on every tensor-parallel rank and
drops activations that are *replicated* over tp (after ``g``'s all-reduce, the embeddings),
so every rank drops the same positions and the copies stay equal. A second one, seeded
``seed + 2718 + tp_rank`` and forked with ``CudaRNGStatesTracker``, drops activations that
are *split* over tp (the attention probabilities of this rank's heads, and under sequence
parallelism this rank's ``s/t`` positions), so that the ranks' slices get independent masks.

minidist keeps the first half of the rule — replicated regions draw from the one-rank
generator with the same seed on every rank — and replaces the second: every parallel run must
equal the one-rank run, and Megatron's per-rank masks are statistically right but not the
mask one rank would draw. So in a split region :class:`SlicedGenerator` draws the *whole*
mask from the one-rank generator (same seed, same shape, same stream position) and keeps
this rank's slice — ``t`` times the random numbers, for masks that are the one-rank mask
exactly (tests/test_tensor_parallel.py: TP and TP+SP with dropout equal one rank).
"""
from __future__ import annotations

import numpy as np


class SlicedGenerator:
    """``rng.random(shape)`` as if the array were ``parts`` times longer along ``axis``,
    returning block ``index`` of it (the only method dropout calls)."""

    def __init__(self, rng, axis: int, index: int, parts: int):
        self.rng, self.axis, self.index, self.parts = rng, axis, index, parts

    @property
    def key(self):
        """The trainer's per-step dropout key (:class:`minidist.nn.DropoutRNG`) lives on the
        wrapped generator: ``Module.set_dropout_key`` reaches it through here."""
        return self.rng.key

    @key.setter
    def key(self, value) -> None:
        self.rng.key = value

    def random(self, shape) -> np.ndarray:
        full = list(shape)
        n = full[self.axis]
        full[self.axis] = n * self.parts                     # the one-rank shape
        whole = self.rng.random(tuple(full))
        return np.take(whole, np.arange(self.index * n, (self.index + 1) * n), axis=self.axis)
