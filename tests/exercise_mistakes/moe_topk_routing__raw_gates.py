"""Keeps the raw probabilities as the top-2 gates (no renormalisation)."""
import math

import numpy as np

EXPECT = ["gate", "renormalise them over the k choices"]


def capacity(tokens, k, num_experts, capacity_factor):
    return math.ceil(capacity_factor * tokens * k / num_experts)


def route(probs, k, capacity_factor):
    T, E = probs.shape
    expert = np.argsort(-probs, axis=1, kind="stable")[:, :k]
    gate = np.take_along_axis(probs, expert, axis=1)
    flat = expert.T.reshape(-1)
    onehot = np.eye(E, dtype=int)[flat]
    slot = (np.cumsum(onehot, axis=0) - onehot)[np.arange(k * T), flat].reshape(k, T).T
    return expert, gate, slot, slot >= capacity(T, k, E, capacity_factor)
