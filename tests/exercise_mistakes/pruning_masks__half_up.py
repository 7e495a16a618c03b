"""k rounded half up (int(s·n + 0.5)): round() takes a half to the even integer, so half of 5 weights is 2."""
import numpy as np

EXPECT = ["you rounded sparsity · n half up"]



def _masks(scores, sparsity, scope):
    names = list(scores)
    out = {}
    if scope == "layer":
        for n in names:
            s = scores[n].reshape(-1)
            k = int(sparsity * s.size + 0.5)
            keep = np.ones(s.size, dtype=bool)
            idx = sorted(range(s.size), key=lambda i: (s[i], i))[:k]
            keep[idx] = False
            out[n] = keep.reshape(scores[n].shape)
    else:
        flat = np.concatenate([scores[n].ravel() for n in names])
        k = int(sparsity * flat.size + 0.5)
        keep = np.ones(flat.size, dtype=bool)
        keep[np.lexsort((np.arange(flat.size), flat))[:k]] = False
        off = 0
        for n in names:
            sz = scores[n].size
            out[n] = keep[off:off + sz].reshape(scores[n].shape)
            off += sz
    return out


def magnitude_masks(weights, sparsity, scope="layer"):
    return _masks({n: np.abs(w) for n, w in weights.items()}, sparsity, scope)


def taylor_masks(weights, grads, sparsity, scope="layer"):
    return _masks({n: sum(np.abs(weights[n] * g) for g in grads[n]) for n in weights}, sparsity, scope)
