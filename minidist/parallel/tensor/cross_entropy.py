"""Cross-entropy over vocabulary-parallel logits (Megatron-LM's ``vocab_parallel_cross_entropy``).

Each tp rank holds the logits of its slice of the vocabulary, ``(N, V/t)``; the whole
``(N, V)`` logits never exist on one rank. The softmax needs three numbers per token that
depend on every slice, each one all-reduce of ``N`` elements:

1. the **max** logit (MAX), for a numerically safe ``exp``;
2. the **target logit** (SUM): only the rank whose slice holds the target contributes;
3. the **sum of exponentials** (SUM).

``loss_i = log Σ_v exp(z_iv − m_i) − (z_i,target − m_i)``, and the gradient
``softmax − onehot`` is computed on each rank for its own columns, with no communication.

Padded vocabulary (Megatron's ``make_vocab_size_divisible_by``): columns ``≥ vocab_size``
exist only so that the table divides by t. Megatron trains them as ordinary classes that
are never a target; minidist masks them to ``−∞`` here so that the padded model computes
exactly the one-rank model's loss (their embedding rows start at 0 and stay 0).
"""
from __future__ import annotations

import numpy as np

from ... import distributed as dist
from ...tensor import Tensor, as_tensor, make_result


def vocab_parallel_cross_entropy(logits, targets, group, vocab_start: int, vocab_size: int,
                                 ignore_index: int = -1) -> Tensor:
    """Mean cross-entropy over targets ``!= ignore_index``; ``logits`` ``(..., V/t)`` hold
    columns ``[vocab_start, vocab_start + V/t)`` of the (padded) vocabulary."""
    logits = as_tensor(logits)
    t = np.asarray(targets.data if isinstance(targets, Tensor) else targets).reshape(-1)
    n = logits.shape[-1]
    z = logits.data.reshape(-1, n)                                 # (N, V/t)
    if t.shape[0] != z.shape[0]:
        raise ValueError(f"vocab_parallel_cross_entropy: {z.shape[0]} rows of logits but {t.shape[0]} targets")
    padded = np.arange(vocab_start, vocab_start + n) >= vocab_size  # (V/t,) columns beyond the vocabulary
    if padded.any():
        z = np.where(padded, -np.inf, z)
    # why: the softmax's max runs over the whole vocabulary, held in slices by the tp ranks
    m = dist.all_reduce(group, z.max(axis=1), op="max", algorithm="ring")            # (N,)
    shifted = z - m[:, None]                                       # (N, V/t)
    valid = t != ignore_index
    local = t - vocab_start
    mine = valid & (local >= 0) & (local < n)                      # the target is one of my columns
    rows = np.arange(z.shape[0])
    target_logit = np.where(mine, shifted[rows, np.where(mine, local, 0)], 0.0)
    # why: the target's logit lives on exactly one rank; the sum gives it to every rank
    target_logit = dist.all_reduce(group, target_logit, op="sum", algorithm="ring")
    e = np.exp(shifted)
    # why: the softmax's denominator sums over every slice of the vocabulary
    s = dist.all_reduce(group, e.sum(axis=1), op="sum", algorithm="ring")            # (N,)
    count = max(int(valid.sum()), 1)
    loss = ((np.log(s) - target_logit)[valid]).sum() / count
    probs = e / s[:, None]                                         # (N, V/t), saved for backward

    def backward(g, needs):
        d = probs.copy()
        d[rows[mine], local[mine]] -= 1.0                          # − onehot, on the target's rank
        d[~valid] = 0.0
        d *= g / count
        return (d.reshape(logits.shape),)
    return make_result(np.asarray(loss, dtype=z.dtype), (logits,), backward, "cross_entropy",
                       saved=[probs], flops=5 * z.size)
