"""Cross-entropy of logits against integer targets, fused with its log-softmax."""
from __future__ import annotations

import numpy as np

from ..tensor import Tensor, as_tensor, make_result


def cross_entropy(logits, targets, ignore_index: int = -100, reduction: str = "mean") -> Tensor:
    """Mean (or sum) of -log softmax(logits)[target] over targets != ``ignore_index``.

    ``logits`` is (N, V) (or (..., V), flattened), ``targets`` (N,) integers in [0, V).
    Backward: (softmax - onehot) / count — the fused form every framework uses.
    """
    logits = as_tensor(logits)
    t = targets.data if isinstance(targets, Tensor) else np.asarray(targets)
    V = logits.shape[-1]
    z = logits.data.reshape(-1, V)                           # (N, V)
    t = t.reshape(-1)
    if t.shape[0] != z.shape[0]:
        raise ValueError(f"cross_entropy: {z.shape[0]} rows of logits but {t.shape[0]} targets")
    if t.dtype.kind not in "iu":
        raise TypeError(f"cross_entropy targets must be integers, got {t.dtype}")
    valid = t != ignore_index
    if np.any((t[valid] < 0) | (t[valid] >= V)):
        bad = t[valid][(t[valid] < 0) | (t[valid] >= V)][0]
        raise IndexError(f"cross_entropy target {bad} out of range for {V} classes "
                         f"(use ignore_index={ignore_index} to skip positions)")
    count = max(int(valid.sum()), 1) if reduction == "mean" else 1
    if reduction not in ("mean", "sum"):
        raise ValueError(f"reduction must be 'mean' or 'sum', got {reduction!r}")
    shifted = z - z.max(axis=1, keepdims=True)
    e = np.exp(shifted)
    s = e.sum(axis=1, keepdims=True)
    rows = np.nonzero(valid)[0]
    tv = t[valid]
    loss = (np.log(s[rows, 0]) - shifted[rows, tv]).sum() / count
    probs = e / s                                            # (N, V), saved for backward

    def backward(g, needs):
        d = probs.copy()
        d[rows, tv] -= 1.0
        d[~valid] = 0.0
        d *= g / count
        return (d.reshape(logits.shape),)
    return make_result(np.asarray(loss, dtype=z.dtype), (logits,), backward, "cross_entropy",
                       saved=[probs], flops=5 * z.size)
