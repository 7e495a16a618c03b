"""Dropout masks under tensor and sequence parallelism: the one-rank mask, sliced.

Inside a tensor-parallel region (attention probabilities of this rank's heads) and inside a
sequence-parallel region (this rank's ``s/t`` positions) each rank holds a *slice* of the
activation, so each must drop a slice of the mask. Megatron-LM forks a separate generator
per tensor-parallel rank for this (``tensor_parallel.random.CudaRNGStatesTracker``): cheap,
statistically right, but not the mask one rank would draw. minidist wants every parallel
run to equal the one-rank run, so :class:`SlicedGenerator` draws the *whole* mask from the
one-rank generator (same seed, same shape, same stream position) and keeps this rank's
slice — ``t`` times the random numbers, for masks that are the one-rank mask exactly.
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
