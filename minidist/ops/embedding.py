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
        gw = np.zeros_like(weight.data)
        np.add.at(gw, ids.ravel(), g.reshape(-1, weight.shape[1]))
        return (gw,)
    return make_result(out, (weight,), backward, "embedding", saved=[ids])
