"""The router of a mixture of experts: which experts each token goes to, and in which slot.

Everything here is plain NumPy on the router's probabilities: it decides, it computes no
gradient (the gates that carry gradients are taken from the probabilities by
:class:`~minidist.moe.layer.MoEMLP`). For a group of T tokens and E experts::

    probs (T, E) ─ top-k ─► expert (T, k)      the k likeliest experts, ties to the lower index
                   slots ─► slot (T, k)        choice-major: every token's 1st choice in token
                                               order, then every 2nd choice, …
                   capacity C = ⌈capacity_factor · T · k / E⌉: slot ≥ C is dropped

(Shazeer et al. 2017, top-k gating; Lepikhin et al. 2020 "GShard", §2.2 and Algorithm 1:
groups, expert capacity, the second choice after every first; Fedus et al. 2021 "Switch
Transformers", §2.1: top-1 and the capacity factor.)
"""
from __future__ import annotations

import dataclasses
import math

import numpy as np


def capacity(tokens: int, top_k: int, num_experts: int, capacity_factor: float) -> int:
    """C = ⌈capacity_factor · T · k / E⌉: the slots of each expert in a group of ``tokens``."""
    return int(math.ceil(capacity_factor * tokens * top_k / num_experts - 1e-9))


@dataclasses.dataclass
class Routing:
    """The decisions for one group of T tokens.

    ``expert`` (T, k): the chosen experts, best first; ``slot`` (T, k): the position of each
    assignment in its expert's buffer; ``kept`` (T, k): slot < capacity; ``load`` (E,): the
    assignments each expert received before capacity; ``capacity``: C."""

    expert: np.ndarray
    slot: np.ndarray
    kept: np.ndarray
    load: np.ndarray
    capacity: int

    @property
    def dropped(self) -> int:
        """Assignments that found their expert full (their contribution is zero)."""
        return int((~self.kept).sum())

    def slot_sources(self) -> np.ndarray:
        """(E·C,): the token in each slot of the [E, C] buffer, T where the slot is empty."""
        T, _ = self.expert.shape
        src = np.full(len(self.load) * self.capacity, T, dtype=np.int64)
        tokens = np.broadcast_to(np.arange(T)[:, None], self.expert.shape)
        src[(self.expert * self.capacity + self.slot)[self.kept]] = tokens[self.kept]
        return src

    def slot_positions(self) -> np.ndarray:
        """(T, k): where each assignment's output is in the flat [E·C] buffer, E·C if dropped."""
        return np.where(self.kept, self.expert * self.capacity + self.slot, len(self.load) * self.capacity)


def top_k(probs: np.ndarray, k: int) -> np.ndarray:
    """(T, k) indices of the k largest probabilities per row, best first, ties to the lower expert."""
    return np.argsort(-probs, axis=-1, kind="stable")[:, :k]


def route(probs: np.ndarray, k: int, capacity_factor: float) -> Routing:
    """Top-k, slots in choice-major order, drops beyond capacity, for one group (T, E)."""
    T, E = probs.shape
    C = capacity(T, k, E, capacity_factor)
    expert = top_k(probs, k)                                   # (T, k)
    order = expert.T.reshape(-1)                               # choice-major: (k·T,) choice 0 of every token first
    onehot = np.zeros((k * T, E), dtype=np.int64)
    onehot[np.arange(k * T), order] = 1
    before = np.cumsum(onehot, axis=0) - onehot                # earlier assignments to the same expert
    slot = before[np.arange(k * T), order].reshape(k, T).T     # (T, k)
    return Routing(expert=expert, slot=slot, kept=slot < C, load=onehot.sum(axis=0), capacity=C)
