"""A right answer with plain loops: a counter per expert, walked choice by choice."""
import math

import numpy as np

EXPECT = []


def capacity(tokens, k, num_experts, capacity_factor):
    return math.ceil(capacity_factor * tokens * k / num_experts)


def route(probs, k, capacity_factor):
    T, E = probs.shape
    C = capacity(T, k, E, capacity_factor)
    expert = np.zeros((T, k), dtype=int)
    for t in range(T):
        order = sorted(range(E), key=lambda e: (-probs[t, e], e))     # largest first, lower index on ties
        expert[t] = order[:k]
    gate = np.array([[probs[t, e] for e in expert[t]] for t in range(T)])
    if k > 1:
        gate = gate / gate.sum(axis=1, keepdims=True)
    slot = np.zeros((T, k), dtype=int)
    used = [0] * E
    for c in range(k):                 # choice-major: every token's c-th choice, in token order
        for t in range(T):
            e = expert[t, c]
            slot[t, c] = used[e]
            used[e] += 1
    return expert, gate, slot, slot >= C
