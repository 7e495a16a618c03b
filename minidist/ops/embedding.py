"""Embedding lookup: rows of a table picked by integer ids; backward scatters-adds."""
from __future__ import annotations

import numpy as np

from ..tensor import Tensor, as_tensor, make_result


def embedding(idx, weight) -> Tensor:
    """out[..., :] = weight[idx[...], :]; ids must lie in [0, num_embeddings)."""
    ids = idx.data if isinstance(idx, Tensor) else np.asarray(idx)
    weight = as_tensor(weight)
    if ids.dtype.kind not in "iu":
        raise TypeError(f"embedding indices must be integers, got dtype {ids.dtype}")
    V = weight.shape[0]
    if ids.size and (ids.min() < 0 or ids.max() >= V):
        bad = ids[(ids < 0) | (ids >= V)].ravel()[0]
        raise IndexError(f"embedding index {bad} out of range for a table of {V} rows "
                         f"(vocab_size/block_size too small for the input?)")
    out = weight.data[ids]                                   # (..., C)

    def backward(g, needs):
        # gw[i] = Σ of the rows of g whose id is i. np.add.at does it one row at a time.
        # Here round k adds, for every id at once, that id's k-th row (in original order):
        # the same additions in the same order as add.at (bit-identical), but as a few
        # vectorised steps — as many as the most frequent id's count.
        flat = ids.ravel()
        rows = g.reshape(-1, weight.shape[1])                          # (N, C)
        order = np.argsort(flat, kind="stable")                        # rows grouped by id
        sorted_ids = flat[order]
        starts = np.flatnonzero(np.r_[True, sorted_ids[1:] != sorted_ids[:-1]])
        counts = np.diff(np.r_[starts, flat.size])
        occurrence = np.arange(flat.size) - np.repeat(starts, counts)  # k for the k-th row of its id
        gw = np.zeros_like(weight.data)
        for k in range(int(counts.max()) if flat.size else 0):
            pick = order[occurrence == k]                              # each id at most once
            gw[flat[pick]] += rows[pick]
        return (gw,)
    return make_result(out, (weight,), backward, "embedding", saved=[ids])
