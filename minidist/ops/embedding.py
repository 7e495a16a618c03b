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
        return (scatter_add_rows(ids.ravel(), g.reshape(-1, weight.shape[1]), weight.shape[0]),)
    return make_result(out, (weight,), backward, "embedding", saved=[ids])


def scatter_add_rows(ids: np.ndarray, rows: np.ndarray, num_rows: int) -> np.ndarray:
    """gw[i] = Σ of the ``rows`` whose id is i, added in their original order: exactly what
    ``np.add.at(gw, ids, rows)`` gives (bit for bit), without its one-row-at-a-time loop.

    The rows are grouped by id (a stable sort keeps each id's rows in order); the ids that
    occur the same number of times c form one (ids, c, C) block, and ``np.add.reduce`` over
    its middle axis adds each id's c rows one after the other, as add.at does. So the work is
    one vectorised sum per distinct count (a few dozen for a character corpus, where the space
    alone occurs hundreds of times), not one Python step per occurrence of the likeliest id.
    """
    gw = np.zeros((num_rows, rows.shape[1]), dtype=rows.dtype)
    if ids.size == 0:
        return gw
    order = np.argsort(ids, kind="stable")                             # rows grouped by id, in order
    sorted_ids = ids[order]
    starts = np.flatnonzero(np.r_[True, sorted_ids[1:] != sorted_ids[:-1]])   # each id's first row
    counts = np.diff(np.r_[starts, ids.size])
    by_count = np.argsort(counts, kind="stable")                       # the ids, fewest rows first
    ordered = counts[by_count]
    edges = np.flatnonzero(np.r_[True, ordered[1:] != ordered[:-1], True])
    for a, b in zip(edges[:-1], edges[1:]):                            # the ids occurring c times
        first, c = starts[by_count[a:b]], int(ordered[a])
        block = rows[order[first[:, None] + np.arange(c)]]             # (ids, c, C)
        gw[sorted_ids[first]] = np.add.reduce(block, axis=1, initial=0)   # 0 + r0 + r1 …, as add.at
    return gw
