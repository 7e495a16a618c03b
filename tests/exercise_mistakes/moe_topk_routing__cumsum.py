"""A right answer without loops: one-hot assignments in choice-major order, a running count."""
import numpy as np

EXPECT = []


def capacity(tokens, k, num_experts, capacity_factor):
    return int(-(-capacity_factor * tokens * k // num_experts))      # ceil by negated floor division


def route(probs, k, capacity_factor):
    T, E = probs.shape
    expert = np.argsort(-probs, axis=1, kind="stable")[:, :k]
    gate = np.take_along_axis(probs, expert, axis=1)
    if k > 1:
        gate = gate / gate.sum(axis=1, keepdims=True)
    flat = expert.T.reshape(-1)                      # (k·T,): choice 0 of every token, then choice 1 …
    onehot = np.eye(E, dtype=int)[flat]
    earlier = np.cumsum(onehot, axis=0) - onehot
    slot = earlier[np.arange(k * T), flat].reshape(k, T).T
    return expert, gate, slot, slot >= capacity(T, k, E, capacity_factor)
