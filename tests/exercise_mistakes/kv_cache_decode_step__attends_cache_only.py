"""Attends to the cache before appending: a new token never sees itself."""
import numpy as np

EXPECT = ["attend only to the cached ones"]


def attend_with_cache(q, k, v, k_cache, v_cache):
    L, hs = k_cache.shape[2], q.shape[3]
    if L == 0:                                                     # nothing to look at yet
        y = v.copy()
    else:
        s = q @ np.swapaxes(k_cache, -1, -2) / np.sqrt(hs)
        p = np.exp(s - s.max(axis=-1, keepdims=True))
        y = p / p.sum(axis=-1, keepdims=True) @ v_cache
    return y, np.concatenate([k_cache, k], axis=2), np.concatenate([v_cache, v], axis=2)
