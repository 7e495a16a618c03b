"""A right answer written another way: plain Python sorting of (score, position) pairs."""
import numpy as np

EXPECT = []


def _masks(scores, sparsity, scope):
    names = list(scores)
    groups = [[n] for n in names] if scope == "layer" else [names]
    keep = {n: [True] * scores[n].size for n in names}
    for group in groups:
        items = []
        for n in group:
            for i, v in enumerate(scores[n].reshape(-1).tolist()):
                items.append((v, len(items), n, i))
        for _, _, n, i in sorted(items)[:round(sparsity * len(items))]:
            keep[n][i] = False
    return {n: np.array(keep[n], dtype=bool).reshape(scores[n].shape) for n in names}


def magnitude_masks(weights, sparsity, scope="layer"):
    return _masks({n: np.abs(w) for n, w in weights.items()}, sparsity, scope)


def taylor_masks(weights, grads, sparsity, scope="layer"):
    scores = {}
    for n, w in weights.items():
        total = np.zeros(w.shape)
        for g in grads[n]:
            total += np.abs(w * g)
        scores[n] = total
    return _masks(scores, sparsity, scope)
