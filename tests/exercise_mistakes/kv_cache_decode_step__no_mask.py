"""No causal mask: right for one new position, wrong for a prefill or a chunk."""
import numpy as np

EXPECT = ["see the ones after them"]


def attend_with_cache(q, k, v, k_cache, v_cache):
    K = np.concatenate([k_cache, k], axis=2)
    V = np.concatenate([v_cache, v], axis=2)
    s = q @ np.swapaxes(K, -1, -2) / np.sqrt(q.shape[-1])
    p = np.exp(s - s.max(axis=-1, keepdims=True))
    return p / p.sum(axis=-1, keepdims=True) @ V, K, V
