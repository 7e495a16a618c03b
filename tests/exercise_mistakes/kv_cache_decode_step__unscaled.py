"""Forgets the 1/√hs of scaled dot-product attention."""
import numpy as np

EXPECT = ["not scaled", "√hs"]


def attend_with_cache(q, k, v, k_cache, v_cache):
    K = np.concatenate([k_cache, k], axis=2)
    V = np.concatenate([v_cache, v], axis=2)
    T, Tk = q.shape[2], K.shape[2]
    s = q @ np.swapaxes(K, -1, -2)
    s = np.where(np.arange(Tk)[None, :] <= Tk - T + np.arange(T)[:, None], s, -np.inf)
    p = np.exp(s - s.max(axis=-1, keepdims=True))
    return p / p.sum(axis=-1, keepdims=True) @ V, K, V
