"""Sorts ascending and reverses: equal probabilities put the higher expert first."""
import math

import numpy as np

EXPECT = ["expert", "HIGHER expert index first"]


def capacity(tokens, k, num_experts, capacity_factor):
    return math.ceil(capacity_factor * tokens * k / num_experts)


def route(probs, k, capacity_factor):
    T, E = probs.shape
    expert = np.argsort(probs, axis=1, kind="stable")[:, ::-1][:, :k]
    gate = np.take_along_axis(probs, expert, axis=1)
    if k > 1:
        gate = gate / gate.sum(axis=1, keepdims=True)
    flat = expert.T.reshape(-1)
    onehot = np.eye(E, dtype=int)[flat]
    slot = (np.cumsum(onehot, axis=0) - onehot)[np.arange(k * T), flat].reshape(k, T).T
    return expert, gate, slot, slot >= capacity(T, k, E, capacity_factor)
