"""Sorts descending: prunes the most important weights."""
import numpy as np

EXPECT = ["pruned the HIGHEST scores"]


def _masks(scores, sparsity, scope):
    groups = [[n] for n in scores] if scope == "layer" else [list(scores)]
    out = {}
    for group in groups:
        flat = np.concatenate([scores[n].reshape(-1) for n in group])
        keep = np.ones(flat.size, bool)
        keep[np.argsort(-flat, kind="stable")[:round(sparsity * flat.size)]] = False
        i = 0
        for n in group:
            out[n] = keep[i:i + scores[n].size].reshape(scores[n].shape)
            i += scores[n].size
    return out


def magnitude_masks(weights, sparsity, scope="layer"):
    return _masks({n: np.abs(w) for n, w in weights.items()}, sparsity, scope)


def taylor_masks(weights, grads, sparsity, scope="layer"):
    return _masks({n: sum(np.abs(w * g) for g in grads[n]) for n, w in weights.items()}, sparsity, scope)
