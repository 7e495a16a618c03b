"""Ignores scope: ranks each tensor apart even when a global ranking is asked."""
import numpy as np

EXPECT = ["sparsity 0.5, global", "ranked each tensor apart"]


def _masks(scores, sparsity, scope):
    out = {}
    for n, s in scores.items():
        keep = np.ones(s.size, bool)
        keep[np.argsort(s.reshape(-1), kind="stable")[:round(sparsity * s.size)]] = False
        out[n] = keep.reshape(s.shape)
    return out


def magnitude_masks(weights, sparsity, scope="layer"):
    return _masks({n: np.abs(w) for n, w in weights.items()}, sparsity, scope)


def taylor_masks(weights, grads, sparsity, scope="layer"):
    return _masks({n: sum(np.abs(w * g) for g in grads[n]) for n, w in weights.items()}, sparsity, scope)
