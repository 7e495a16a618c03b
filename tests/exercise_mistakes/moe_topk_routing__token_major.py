"""Gives the slots token by token: token 0's choices, then token 1's, …"""
import math

import numpy as np

EXPECT = ["slot", "choice-major"]


def capacity(tokens, k, num_experts, capacity_factor):
    return math.ceil(capacity_factor * tokens * k / num_experts)


def route(probs, k, capacity_factor):
    T, E = probs.shape
    expert = np.argsort(-probs, axis=1, kind="stable")[:, :k]
    gate = np.take_along_axis(probs, expert, axis=1)
    if k > 1:
        gate = gate / gate.sum(axis=1, keepdims=True)
    slot, used = np.zeros((T, k), dtype=int), np.zeros(E, dtype=int)
    for t in range(T):
        for c in range(k):
            slot[t, c] = used[expert[t, c]]
            used[expert[t, c]] += 1
    return expert, gate, slot, slot >= capacity(T, k, E, capacity_factor)
