"""The causal mask of training (np.tril of a square) cut to (T, L + T): aligned at the top left."""
import numpy as np

EXPECT = ["aligned at the top left", "query i sees keys 0 … L + i"]


def attend_with_cache(q, k, v, k_cache, v_cache):
    K = np.concatenate([k_cache, k], axis=2)
    V = np.concatenate([v_cache, v], axis=2)
    T, Tk, hs = q.shape[2], K.shape[2], q.shape[3]
    s = q @ np.swapaxes(K, -1, -2) / np.sqrt(hs)
    allowed = np.tril(np.ones((Tk, Tk), dtype=bool))[:T]          # row i: keys 0 … i
    s = np.where(allowed, s, -np.inf)
    p = np.exp(s - s.max(axis=-1, keepdims=True))
    return p / p.sum(axis=-1, keepdims=True) @ V, K, V
