"""Prunes every weight at or below the k-th smallest score: ties take more than k."""
import numpy as np

EXPECT = ["tied scores, sparsity 0.3, global", "pruned by a threshold"]


def _masks(scores, sparsity, scope):
    groups = [[n] for n in scores] if scope == "layer" else [list(scores)]
    out = {}
    for group in groups:
        flat = np.concatenate([scores[n].reshape(-1) for n in group])
        k = round(sparsity * flat.size)
        keep = np.ones(flat.size, bool) if k == 0 else flat > np.sort(flat)[k - 1]
        i = 0
        for n in group:
            out[n] = keep[i:i + scores[n].size].reshape(scores[n].shape)
            i += scores[n].size
    return out


def magnitude_masks(weights, sparsity, scope="layer"):
    return _masks({n: np.abs(w) for n, w in weights.items()}, sparsity, scope)


def taylor_masks(weights, grads, sparsity, scope="layer"):
    return _masks({n: sum(np.abs(w * g) for g in grads[n]) for n, w in weights.items()}, sparsity, scope)
