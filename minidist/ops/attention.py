"""Causal scaled dot-product attention (Vaswani et al. 2017), fused forward and backward.

For one head: S = Q Kᵀ / √d, causal mask (position t sees only positions ≤ t),
P = softmax(S), Y = P V. The (T × T) probabilities P are what attention saves for
backward — the 5·a·s²·b term of Korthikanti et al. 2022's activation formula.
With a KV cache (generation, :mod:`minidist.inference`) there are fewer queries than keys:
the Tq queries are the LAST Tq of the Tk positions (the cache holds the Tk − Tq before
them), so the causal mask is aligned at the bottom right — query i sees keys ≤ Tk − Tq + i,
and one decoded token sees every key (PyTorch's ``causal_lower_right``; its plain
``is_causal`` aligns at the upper left, which is wrong for a cache).
FLOPs: 2·Tq·Tk·d for Q Kᵀ and again for P V, per head and sequence; backward twice that.
Under ``autocast`` the operands of both products (Q, K, then P, V) are rounded to the
low-precision format; the softmax itself runs in fp32, as fused attention kernels do.

Speed (NumPy has no fused kernel): causal attention in training skips the blocks of keys
a block of queries cannot see (``CAUSAL_BLOCK``); the softmax and its backward walk the
scores of a few sequences at a time (``PASS_BYTES``), so each pass works on a
cache-sized block instead of streaming the whole (B, nh, T, T) tensor from memory six
times; a pass's scores are stored keys first (``_scores``), so each softmax step is a
NumPy loop per key over all of the pass's heads and queries; everything is done in
place. Outputs and input gradients are laid out (B, T, nh, hs) in memory, so the model's
``transpose(1, 2).reshape(B, T, C)`` around attention is a view, not a copy.
``attention_reference`` below is the plain version, kept to read and to test against.
"""
from __future__ import annotations

import functools
import math

import numpy as np

from ..autocast import cast_input
from ..tensor import Tensor, as_tensor, make_result
from .activations import check_dropout_p
from .blas_threads import one_blas_thread
from .intra_op import parallel_for
from .linalg import _charge

def causal_mask(T: int, dtype, transposed: bool = False, keys: int | None = None) -> np.ndarray:
    """(T, keys) additive mask (``keys`` defaults to T): 0 where query i may see key j, i.e.
    j ≤ keys − T + i (bottom-right aligned), -inf elsewhere (cached, read-only).

    ``transposed=True``: the same mask laid out (keys, queries), stored contiguous.
    """
    return _causal_mask(int(T), int(T if keys is None else keys), np.dtype(dtype), bool(transposed))


# Shared by every rank of the in-process backend (threads of one process): lru_cache is
# thread-safe, maxsize bounds it (a few sequence lengths × dtypes × layouts are ever in use;
# each (T, T) mask is T² elements), and the masks are read-only so no rank can change another's.
@functools.lru_cache(maxsize=16)
def _causal_mask(T: int, keys: int, dtype: np.dtype, transposed: bool) -> np.ndarray:
    mask = np.triu(np.full((T, keys), -np.inf, dtype=dtype), k=1 + keys - T)
    mask = np.ascontiguousarray(mask.T) if transposed else mask
    mask.setflags(write=False)
    return mask


# Causal attention in training skips the products with keys no query of a block sees, as
# FlashAttention skips its fully masked tiles (Dao et al. 2022): the queries are cut in
# blocks of CAUSAL_BLOCK, and block q0:q1 is multiplied with keys :q1 only (at T = 2
# blocks, 3/4 of the work; smaller blocks save more products but NumPy's per-call cost and
# its reductions over short rows eat the gain at T = 128). The terms left out are exact
# zeros; what changes is where BLAS splits its sums (dV and dK add one product per block):
# about one unit in the last place. T <= CAUSAL_BLOCK, non-causal attention and a KV
# cache's Tk > T are one block: the whole (Tk × T) products, the unblocked arithmetic.
CAUSAL_BLOCK = 64
# A pass of the softmax walks this many bytes of one block's scores (a few sequences, all
# heads): 3 sequences of the reference model (bench_engine.py), measured against 1, 2 and 4
# (fewer: more NumPy calls; more: the pass leaves the 512 KB L2 for good).
PASS_BYTES = 768 * 1024


def _query_blocks(T: int, Tk: int, is_causal: bool) -> list[tuple[int, int, int]]:
    """(q0, q1, r1) per block of queries: queries q0:q1 see keys :r1."""
    if not is_causal or Tk != T:
        return [(0, T, Tk)]
    edges = list(range(0, T, CAUSAL_BLOCK)) + [T]
    return [(q0, q1, q1) for q0, q1 in zip(edges, edges[1:])]


def _cut(flat: np.ndarray, blocks) -> list[np.ndarray]:
    """``flat`` cut into one flat piece per block of queries, in proportion to its width."""
    per_query, out, start = flat.size // sum(q1 - q0 for q0, q1, _ in blocks), [], 0
    for q0, q1, _ in blocks:
        out.append(flat[start:start + per_query * (q1 - q0)])
        start += per_query * (q1 - q0)
    return out


# Below this many queries a block keeps the heads-first layout (see ``_scores``).
KEYS_FIRST_MIN_WIDTH = 4


def _scores(flat: np.ndarray, sq: slice, nh: int, keys: int, w: int) -> np.ndarray:
    """Sequences ``sq`` of one block's scores, as the (n, nh, keys, w) view every step takes.

    A block's piece of the buffer holds its sequences one pass after another, each pass's
    n sequences contiguous. Inside a pass the layout is keys first, (keys, n, nh, w): key
    i's scores of the pass's sequences, heads and queries side by side, so that each
    softmax step (NumPy orders its loops by memory) runs one inner loop of n·nh·w numbers
    per key instead of n·nh·keys loops of w — NumPy's cost per inner loop dominated at
    w = 64 — and the pass is one contiguous piece of L2. BLAS takes the strided (keys × w)
    matrices as they are (a leading dimension), with the same arithmetic. Blocks narrower
    than ``KEYS_FIRST_MIN_WIDTH`` (a ragged last block, a decoded token) keep the plain
    (n, nh, keys, w) layout: for such thin matrices NumPy and OpenBLAS take other paths (a
    dot, another gemv kernel) when the rows are strided, which would change the sums.
    """
    n, size = len(range(sq.start, sq.stop)), nh * keys * w
    piece = flat[sq.start * size:sq.start * size + n * size]
    if w < KEYS_FIRST_MIN_WIDTH:
        return piece.reshape(n, nh, keys, w)
    return piece.reshape(keys, n, nh, w).transpose(1, 2, 0, 3)


def _rows(x: np.ndarray, w: int) -> np.ndarray:
    """An (n, nh, keys or 1, w) view of keys-first scores, or an array shaped as one key's
    row of them, as the plain (keys, n·nh·w) rows it is in memory (a view): broadcasting a
    per-query row over the keys then runs one loop per key (NumPy, left to order the axes
    of a 4-d view and a broadcast operand, walked it key by key)."""
    if w < KEYS_FIRST_MIN_WIDTH:
        return x
    return x.transpose(2, 0, 1, 3).reshape(x.shape[2], -1)


def _empty_bthd(B, nh, T, hs, dtype) -> np.ndarray:
    """An uninitialised (B, nh, T, hs) array stored as (B, T, nh, hs): heads side by side."""
    return np.empty((B, T, nh, hs), dtype=dtype).swapaxes(1, 2)


def scaled_dot_product_attention(q, k, v, is_causal: bool = False, dropout_p: float = 0.0,
                                 rng: np.random.Generator | None = None) -> Tensor:
    """q: (B, nh, T, hs), k, v: (B, nh, Tk, hs) → (B, nh, T, hs). Not causal by default, as
    torch's (GPT passes ``is_causal=True``). Tk = T in training, Tk > T with a KV cache (the
    queries are the last T positions). Forward and backward run BLAS on one thread: their B·nh products are too small to split
    (:mod:`minidist.ops.blas_threads`)."""
    check_dropout_p(dropout_p)
    with one_blas_thread():
        return _attention(q, k, v, is_causal, dropout_p, rng)


def _one_thread(backward):
    def run(g, needs):
        with one_blas_thread():
            return backward(g, needs)
    return run


def _attention(q, k, v, is_causal, dropout_p, rng) -> Tensor:
    q, k, v = as_tensor(q), as_tensor(k), as_tensor(v)
    if k.shape != v.shape or q.ndim != 4 or k.ndim != 4 or q.shape[:2] + q.shape[3:] != k.shape[:2] + k.shape[3:] \
            or (is_causal and k.shape[2] < q.shape[2]):
        raise ValueError(f"attention expects q (B, nh, T, hs) and k, v of one shape (B, nh, Tk, hs), Tk >= T when "
                         f"causal; got {q.shape}, {k.shape}, {v.shape}")
    B, nh, T, hs = q.shape
    Tk = k.shape[2]                                           # keys: T, or the cache's positions and these
    dt = q.dtype
    scale = np.asarray(1.0 / math.sqrt(hs), dtype=dt)
    qd, kd, vd = cast_input(q.data), cast_input(k.data), cast_input(v.data)   # autocast
    qs = qd * scale                                           # scale Q (T·hs) rather than S (T·Tk)
    ones = np.ones((1, Tk), dtype=dt)                         # ones @ X sums X over its rows
    # The scores are built transposed, Sᵀ = K Qᵀ (keys down, queries across): the softmax
    # over keys then reduces over rows, which NumPy vectorises, rather than over 128-long
    # rows one at a time. They live in one buffer of B·nh·Tk·T numbers cut into blocks of
    # queries (``_query_blocks``), each laid out as ``_scores`` says.
    mask_t = causal_mask(T, dt, transposed=True, keys=Tk) if is_causal else None    # (keys, queries)
    blocks = _query_blocks(T, Tk, is_causal)
    nb = max(1, min(B, PASS_BYTES // (nh * Tk * min(T, CAUSAL_BLOCK) * q.data.itemsize)))   # sequences per pass
    passes = [slice(b, min(b + nb, B)) for b in range(0, B, nb)]
    p_all = np.empty(B * nh * Tk * T, dtype=dt)               # the probabilities, block after block
    p_blk = _cut(p_all, blocks)
    masks = []
    for q0, q1, r1 in blocks:                                 # queries q0:q1 see keys :r1
        w, mask = q1 - q0, None
        if mask_t is not None:                                # the mask of rows q0:r1 (the rows above see
            mask = _scores(np.empty(nb * nh * (r1 - q0) * w, dtype=dt), slice(0, nb), nh, r1 - q0, w)
            mask[...] = mask_t[q0:r1, q0:q1]                  # every query), laid out as the scores
        masks.append(mask)

    def scores(first, last, piece):                           # passes[first:last]: see intra_op
        for (q0, q1, r1), pj, mask in zip(blocks, p_blk, masks):
            w = q1 - q0
            for sq in passes[first:last]:                     # a few sequences: the block fits in L2
                sh = _scores(pj, sq, nh, Tk, w)               # (n, nh, keys, w)
                s = np.matmul(kd[sq, :, :r1], np.swapaxes(qs[sq, :, q0:q1], -1, -2), out=sh[:, :, :r1])
                if mask is not None:
                    s[:, :, q0:] += mask[:len(s)]
                _rows(s, w)[...] -= _rows(s.max(axis=-2, keepdims=True), w)
                np.exp(s, out=s)
                z = np.matmul(ones[:, :r1], s)                # Σ over keys: (n, nh, 1, w)
                _rows(s, w)[...] *= _rows(np.divide(1.0, z, out=z), w)
                sh[:, :, r1:] = 0.0                           # keys after the block's last query
    parallel_for(len(passes), scores)
    qs = None                                                 # the scaled Q is not kept
    p_all = cast_input(p_all)                                 # operand of P V (rounded under autocast)
    p_blk = _cut(p_all, blocks)
    keep = None
    inv_keep = np.asarray(1.0 / (1.0 - dropout_p), dtype=dt)   # inverted dropout: E[P∘mask/(1-p)] = P
    if dropout_p > 0.0:
        rng = rng if rng is not None else np.random.default_rng()
        keep = rng.random((B, nh, T, Tk)) >= dropout_p        # (B, nh, T, Tk) bool: the 1-byte mask
        pd_blk = []                                           # P∘mask/(1-p): backward's operand of dV
        for (q0, q1, _), pj in zip(blocks, p_blk):
            pdj = np.empty_like(pj)
            for sq in passes:
                pd = np.multiply(_scores(pj, sq, nh, Tk, q1 - q0), np.swapaxes(keep[sq, :, q0:q1], -1, -2),
                                 out=_scores(pdj, sq, nh, Tk, q1 - q0), dtype=dt)
                pd *= inv_keep
            pd_blk.append(pdj)
    else:
        pd_blk = p_blk
    y = _empty_bthd(B, nh, T, hs, dt)                         # (B, nh, T, hs)

    def values(first, last, piece):
        for (q0, q1, r1), pdj in zip(blocks, pd_blk):         # Y = P V over the keys each block sees
            for sq in passes[first:last]:
                pd = _scores(pdj, sq, nh, Tk, q1 - q0)[:, :, :r1]
                np.matmul(np.swapaxes(pd, -1, -2), vd[sq, :, :r1], out=y[sq, :, q0:q1])
    parallel_for(len(passes), values)
    mm = 2 * B * nh * T * Tk * hs                             # one of the two products (as if no block skipped)

    def backward(g, needs):
        _charge("attention.backward", 4 * mm)
        dq = _empty_bthd(B, nh, T, hs, g.dtype)
        dk, dv = (_empty_bthd(B, nh, Tk, hs, g.dtype) for _ in range(2))
        w0 = blocks[0][1] - blocks[0][0]                      # the widest block

        def scratch(buf, n, r1, w):
            """A pass's (n, nh, r1, w) dP in ``buf``: laid out as ``_scores`` lays out P, or
            for a narrow block a corner of a (nb, nh, Tk, w0) array, as it always was."""
            if w < KEYS_FIRST_MIN_WIDTH:
                return buf.reshape(nb, nh, Tk, w0)[:n, :, :r1, :w]
            return _scores(buf, slice(0, n), nh, r1, w)

        def gradients(first, last, piece):                    # passes[first:last]: see intra_op
            ds_buf, tmp = (np.empty(nb * nh * Tk * w0, dtype=g.dtype) for _ in range(2))   # one pass's, reused
            for i in reversed(range(len(blocks))):            # the last block sees every key: it sets dV, dK
                _gradients(blocks[i], p_blk[i], pd_blk[i], passes[first:last], ds_buf, tmp)

        def _gradients(block, pj, pdj, my_passes, ds_buf, tmp):
            q0, q1, r1 = block
            w = q1 - q0
            for sq in my_passes:
                n, gq = len(range(B)[sq]), g[sq, :, q0:q1]
                ds = np.matmul(vd[sq, :, :r1], np.swapaxes(gq, -1, -2), out=scratch(ds_buf, n, r1, w))  # dPᵀ = V dYᵀ
                if keep is not None:                                                # dropout backward
                    ds *= np.swapaxes(keep[sq, :, q0:q1, :r1], -1, -2)
                    ds *= inv_keep
                pb, pdb = _scores(pj, sq, nh, Tk, w)[:, :, :r1], _scores(pdj, sq, nh, Tk, w)
                # softmax backward, in place: dS = P ∘ (dP - Σ_keys dP∘P)
                z = np.matmul(ones[:, :r1], np.multiply(ds, pb, out=scratch(tmp, n, r1, w)))  # (n, nh, 1, w)
                _rows(ds, w)[...] -= _rows(z, w)
                ds *= pb
                np.matmul(np.swapaxes(ds, -1, -2), kd[sq, :, :r1], out=dq[sq, :, q0:q1])   # dQ = dS K
                if r1 == Tk:                                                        # dV = Pᵀ dY, dK = dSᵀ Q
                    np.matmul(pdb, gq, out=dv[sq])
                    np.matmul(ds, qd[sq, :, q0:q1], out=dk[sq])
                else:                                                               # add this block's queries
                    dv[sq, :, :r1] += np.matmul(pdb[:, :, :r1], gq)
                    dk[sq, :, :r1] += np.matmul(ds, qd[sq, :, q0:q1])
        parallel_for(len(passes), gradients)
        # S = scale · Q Kᵀ: the scale multiplies both gradients (applied to the buffers
        # behind dq, dk, which are contiguous in their (B, T, nh, hs) layout)
        np.multiply(dq.base, scale, out=dq.base)
        np.multiply(dk.base, scale, out=dk.base)
        return dq, dk, dv
    # saved for backward: Q, K, V, the softmax output P and, with dropout, its 1-byte mask and P∘mask
    saved = [qd, kd, vd, p_all] + ([keep, *pd_blk] if keep is not None else [])
    return make_result(y, (q, k, v), _one_thread(backward), "attention", saved=saved, flops=2 * mm, matmul=True)


def attention_reference(q, k, v, is_causal: bool = True):
    """The plain NumPy forward on arrays (no autograd): what the blocked version computes."""
    hs = q.shape[-1]
    s = (q @ np.swapaxes(k, -1, -2)) / math.sqrt(hs)          # (B, nh, T, Tk)
    if is_causal:
        s = s + causal_mask(q.shape[-2], q.dtype, keys=k.shape[-2])
    p = np.exp(s - s.max(axis=-1, keepdims=True))
    p /= p.sum(axis=-1, keepdims=True)
    return p @ v
