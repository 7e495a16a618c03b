"""A right answer written with np.lexsort (score first, then position) and np.split for "global"."""
import numpy as np

EXPECT = []


def _keep(flat, sparsity):
    k = round(sparsity * flat.size)
    order = np.lexsort((np.arange(flat.size), flat))        # by score, ties by position
    keep = np.ones(flat.size, dtype=bool)
    keep[order[:k]] = False
    return keep


def _masks(scores, sparsity, scope):
    if scope == "layer":
        return {n: _keep(s.ravel(), sparsity).reshape(s.shape) for n, s in scores.items()}
    sizes = np.cumsum([s.size for s in scores.values()])[:-1]
    parts = np.split(_keep(np.concatenate([s.ravel() for s in scores.values()]), sparsity), sizes)
    return {n: p.reshape(s.shape) for (n, s), p in zip(scores.items(), parts)}


def magnitude_masks(weights, sparsity, scope="layer"):
    return _masks({n: np.abs(w) for n, w in weights.items()}, sparsity, scope)


def taylor_masks(weights, grads, sparsity, scope="layer"):
    scores = {n: np.sum([np.abs(w * g) for g in grads[n]], axis=0) for n, w in weights.items()}
    return _masks(scores, sparsity, scope)
