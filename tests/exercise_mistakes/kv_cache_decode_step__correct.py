"""A right answer: the caches by np.concatenate, the scores by einsum, the mask from positions."""
import numpy as np

EXPECT = []


def attend_with_cache(q, k, v, k_cache, v_cache):
    K = np.concatenate([k_cache, k], axis=2)                      # (B, nh, L + T, hs)
    V = np.concatenate([v_cache, v], axis=2)
    T, Tk, hs = q.shape[2], K.shape[2], q.shape[3]
    s = np.einsum("bhqd,bhkd->bhqk", q, K) / np.sqrt(hs)           # (B, nh, T, L + T)
    query_pos = Tk - T + np.arange(T)                              # where the new positions sit
    s = np.where(np.arange(Tk)[None, :] <= query_pos[:, None], s, -np.inf)
    p = np.exp(s - s.max(axis=-1, keepdims=True))
    p /= p.sum(axis=-1, keepdims=True)
    return np.einsum("bhqk,bhkd->bhqd", p, V), K, V
