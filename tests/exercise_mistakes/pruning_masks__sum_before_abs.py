"""Taylor score |w · Σ_b g_b|: the gradients are summed before the absolute value."""
import numpy as np

EXPECT = ["Taylor", "summed the gradients before taking |·|"]


def _masks(scores, sparsity, scope):
    groups = [[n] for n in scores] if scope == "layer" else [list(scores)]
    out = {}
    for group in groups:
        flat = np.concatenate([scores[n].reshape(-1) for n in group])
        keep = np.ones(flat.size, bool)
        keep[np.argsort(flat, kind="stable")[:round(sparsity * flat.size)]] = False
        i = 0
        for n in group:
            out[n] = keep[i:i + scores[n].size].reshape(scores[n].shape)
            i += scores[n].size
    return out


def magnitude_masks(weights, sparsity, scope="layer"):
    return _masks({n: np.abs(w) for n, w in weights.items()}, sparsity, scope)


def taylor_masks(weights, grads, sparsity, scope="layer"):
    return _masks({n: np.abs(w * sum(grads[n])) for n, w in weights.items()}, sparsity, scope)
