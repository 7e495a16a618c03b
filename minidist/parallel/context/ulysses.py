"""DeepSpeed-Ulysses (Jacobs et al. 2023, "DeepSpeed Ulysses: System Optimizations for
Enabling Training of Extreme Long Sequence Transformer Models", §3): trade the sequence
split for a head split around attention, with two all-to-alls.

Outside attention each of the ``cp`` ranks holds ``s/cp`` consecutive positions of every
head. Attention needs every position of a head, but heads are independent. So::

    q, k, v (B, nh, s/cp, hs)  ──all-to-all──►  (B, nh/cp, s, hs)   my nh/cp heads, every position
                                attention (the one-rank kernel, causal mask as usual)
    out (B, nh/cp, s, hs)      ──all-to-all──►  (B, nh, s/cp, hs)   back to my positions

In the all-to-all, rank r sends heads block j of its positions to rank j and receives from
rank j its positions of heads block r. Forward makes four all-to-alls (q, k, v in, the
output back), each moving ``(cp − 1)/cp · b · (s/cp) · h`` elements per rank (``h``: the
hidden size of this rank's heads); backward makes the same four in the other direction
(the gradient of an all-to-all is the inverse all-to-all). Heads must divide by cp — the
limit of Ulysses, which ring attention does not have. Each rank holds the (nh/cp) score
matrices of size s × s: 1/cp of one rank's.
"""
from __future__ import annotations

import numpy as np

from ... import distributed as dist
from ... import functional as F
from ...autocast import autocast, autocast_dtype
from ...tensor import Tensor, as_tensor, make_result
from ..tensor.random import SlicedGenerator
from .ring import check_qkv


def heads_problem(n_head: int, cp: int) -> str | None:
    """Why ``n_head`` heads (of this tensor-parallel rank) cannot be split over cp ranks, or None."""
    if n_head % cp == 0:
        return None
    return (f"Ulysses gives each context-parallel rank n_head/cp heads, but {n_head} heads are not divisible by "
            f"cp = {cp}; choose parallel.context.size among {[d for d in range(1, n_head + 1) if n_head % d == 0]} "
            f"or parallel.context.algorithm 'ring'")


# -- the two all-to-alls on arrays ---------------------------------------------------------------
def sequence_to_heads(group, x: np.ndarray, wire=None) -> np.ndarray:
    """(B, nh, s/cp, hs) on every rank → (B, nh/cp, s, hs): my heads, every rank's positions in rank order."""
    cp = group.size
    B, nh, Ts, hs = x.shape
    blocks = x.reshape(B, cp, nh // cp, Ts, hs).swapaxes(0, 1)               # (cp, B, nh/cp, Ts, hs): block j → rank j
    got = dist.all_to_all(group, np.ascontiguousarray(blocks), wire_dtype=wire)   # (cp, …) row j from rank j
    return np.ascontiguousarray(got.transpose(1, 2, 0, 3, 4)).reshape(B, nh // cp, cp * Ts, hs)


def heads_to_sequence(group, y: np.ndarray, wire=None) -> np.ndarray:
    """(B, nh/cp, s, hs) → (B, nh, s/cp, hs): the inverse of :func:`sequence_to_heads`."""
    cp = group.size
    B, nhc, T, hs = y.shape
    blocks = y.reshape(B, nhc, cp, T // cp, hs).transpose(2, 0, 1, 3, 4)     # (cp, B, nh/cp, s/cp, hs): positions of rank j
    got = dist.all_to_all(group, np.ascontiguousarray(blocks), wire_dtype=wire)   # row j: heads block j, my positions
    # stored (B, s/cp, nh, hs): the model's transpose(1, 2).reshape(B, s/cp, C) is then a view
    return np.ascontiguousarray(got.transpose(1, 3, 0, 2, 4)).reshape(B, T // cp, cp * nhc, hs).swapaxes(1, 2)


# -- as autograd ops: each backward is the other all-to-all --------------------------------------
def scatter_heads(x, group) -> Tensor:
    """Sequence-split → head-split (forward all-to-all); backward: head-split → sequence-split."""
    x = as_tensor(x)
    wire = autocast_dtype()
    # why: attention needs every position of a head; each rank takes nh/cp heads whole
    out = sequence_to_heads(group, x.data, wire)

    def backward(g, needs):
        # why: the gradient of my heads' positions goes back to the ranks that own those positions
        return (heads_to_sequence(group, g, wire),)
    with autocast(None):                       # a permutation changes no value
        return make_result(out, (x,), backward, "ulysses_scatter_heads")


def gather_heads(y, group) -> Tensor:
    """Head-split → sequence-split (the output's all-to-all); backward: the forward one."""
    y = as_tensor(y)
    wire = autocast_dtype()
    # why: after attention every rank again holds its own positions, of every head
    out = heads_to_sequence(group, y.data, wire)

    def backward(g, needs):
        return (sequence_to_heads(group, g, wire),)
    with autocast(None):
        return make_result(out, (y,), backward, "ulysses_gather_heads")


def ulysses_attention(q, k, v, group, is_causal: bool = True, dropout_p: float = 0.0, rng=None) -> Tensor:
    """q, k, v: (B, nh, T/cp, hs), rank r holding positions [r·T/cp, (r+1)·T/cp) → the
    attention output of those positions, (B, nh, T/cp, hs)."""
    q, k, v = as_tensor(q), as_tensor(k), as_tensor(v)
    check_qkv(q, k, v, "Ulysses attention")
    problem = heads_problem(q.shape[1], group.size)
    if problem:
        raise ValueError(problem)
    qh, kh, vh = (scatter_heads(t, group) for t in (q, k, v))               # 3 × (B, nh/cp, T, hs)
    if rng is not None and group.size > 1:
        rng = SlicedGenerator(rng, axis=1, index=group.rank, parts=group.size)   # my heads' rows of the mask
    y = F.scaled_dot_product_attention(qh, kh, vh, is_causal=is_causal, dropout_p=dropout_p, rng=rng)
    return gather_heads(y, group)                                           # (B, nh, T/cp, hs)
