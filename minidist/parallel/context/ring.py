"""Ring attention (Liu et al. 2023, "Ring Attention with Blockwise Transformers for
Near-Infinite Context"): exact attention over a sequence split across the ``cp`` ranks of a
ring, without any rank ever holding all the keys, all the values or an (s × s) score matrix.

Each rank holds the queries, keys and values of its own positions (:mod:`.layout`: zigzag
chunks by default). In ``cp`` steps the key/value blocks travel once around the ring::

    step 0:  rank r attends its queries to its own K_r, V_r      and sends K_r, V_r to r + 1
    step 1:  … to K_{r−1}, V_{r−1} (just received)                 and sends them on to r + 1
    …
    step cp − 1: … to K_{r+1}, V_{r+1}                             (nothing left to send)

so a rank sends ``cp − 1`` messages of its K and V blocks per layer: ``2·(cp − 1)·b·(s/cp)·h``
elements (``h`` = the hidden size of this rank's heads). The next block is in flight while
the current one is computed (send/recv on the comm stream, matmuls on the compute stream).

**The online-softmax merge** (Milakov & Gimelshein 2018; Dao et al. 2022, FlashAttention,
§3.1). A query row sees its scores in pieces, one key block at a time. It keeps the running
maximum ``m``, the running sum ``l = Σ exp(s − m)`` and the running unnormalised output
``acc = Σ exp(s − m)·v``; a new block with scores ``s'`` is merged by rescaling::

    m_new = max(m, max s')              α = exp(m − m_new)
    l     = α·l   + Σ exp(s' − m_new)
    acc   = α·acc + exp(s' − m_new) · V'
    … after the last block: out = acc / l,   lse = m + log l   (saved for backward)

which equals softmax over all the keys at once, whatever the order of the blocks.

**Backward** (FlashAttention-2's, Dao 2023, Algorithm 2, block by block). With ``D = rowsum(dO ∘ O)``
each block's probabilities are recomputed from the saved ``lse`` — ``P = exp(S − lse)`` —
and ``dV += Pᵀ dO``, ``dP = dO Vᵀ``, ``dS = P ∘ (dP − D)``, ``dQ += dS K``, ``dK += dSᵀ Q``
(times 1/√d). K and V circulate again, and the partial ``dK, dV`` of each block travel with
it and arrive back at their owner after ``cp − 1`` hops: per rank ``cp − 1`` K/V messages
and ``cp − 1`` dK/dV messages, twice the forward's elements. Under fp16/bf16 (backward runs
outside autocast, so the forward's format is kept for it) K and V travel again in that format,
but the partial dK, dV travel as fp32 accumulators, cast to the 16-bit format only by their
owner, as ring-flash-attention's ``ring_flash_attn_backward`` does (zhuzilin/ring-flash-attention):
three times the forward's bytes (:func:`minidist.estimate.context.context_bytes_per_step`).
Nothing (s × s) is ever saved:
only q, k, v, the output and ``lse`` (and a dropout mask of this rank's query rows).

Dropout on the probabilities draws the one-rank mask (B, nh, s, s) and keeps this rank's
query rows, so training equals one rank's (:mod:`minidist.parallel.tensor.random` does the
same for tensor parallelism); ``l`` sums the probabilities before dropout, ``acc`` after.
"""
from __future__ import annotations

import math

import numpy as np

from ...autocast import autocast_dtype, cast_input
from ...memory import DTYPE_BYTES
from ...ops.activations import check_dropout_p
from ...ops.attention import causal_mask
from ...tensor import Tensor, as_tensor, make_result
from .layout import chunks_of, positions, ring_schedule, split_problem


def check_qkv(q, k, v, what: str) -> None:
    if q.ndim != 4 or q.shape != k.shape or k.shape != v.shape:
        raise ValueError(f"{what} expects q, k, v of one shape (B, nh, T_local, hs), got {q.shape}, {k.shape}, "
                         f"{v.shape}")


def _compute_waits_for_comm(clock) -> None:
    # the matmuls of the next block need the block that just arrived
    clock.wait("compute", clock.now("comm"))


def _comm_waits_for_compute(clock) -> None:
    # a partial gradient cannot leave before the matmuls that produce it
    clock.wait("comm", clock.now("compute"))


def _send_as(group, call, wire_dtype, x, dest: int, tag: int):
    """``isend`` of ``x`` inside ``call`` counted at ``wire_dtype``'s bytes (None: its own
    itemsize) rather than the call's: the partial dK, dV share the backward's ring with K, V
    but not their format."""
    keep = call.bytes_per_element
    call.bytes_per_element = DTYPE_BYTES[wire_dtype] if wire_dtype is not None else None
    try:
        return group.isend(x, dest, tag=tag)
    finally:
        call.bytes_per_element = keep


def ring_attention(q, k, v, group, is_causal: bool = True, layout: str = "zigzag", dropout_p: float = 0.0,
                   rng=None) -> Tensor:
    """q, k, v: (B, nh, T/cp, hs) — this rank's positions in ``layout`` order — → the
    attention output of those positions over the whole sequence, (B, nh, T/cp, hs).
    ``group``: the context-parallel communicator (``grid.cp``); one rank is blockwise
    (flash) attention."""
    q, k, v = as_tensor(q), as_tensor(k), as_tensor(v)
    check_qkv(q, k, v, "ring attention")
    check_dropout_p(dropout_p)
    cp, r = group.size, group.rank
    B, nh, Tl, hs = q.shape
    T = Tl * cp
    problem = split_problem(T, cp, layout)
    if problem:
        raise ValueError(problem)
    c = T // (2 * cp if layout == "zigzag" else cp)           # positions per chunk
    dt = q.dtype
    scale = np.asarray(1.0 / math.sqrt(hs), dtype=dt)
    qd, kd, vd = cast_input(q.data), cast_input(k.data), cast_input(v.data)
    qs = qd * scale                                           # scale Q (T·hs) rather than every S block
    keep, inv_keep = None, np.asarray(1.0 / (1.0 - dropout_p), dtype=dt)
    if dropout_p > 0.0:
        rng = rng if rng is not None else np.random.default_rng()
        whole = rng.random((B, nh, T, T)) >= dropout_p        # the one-rank mask (B, nh, T, T)
        keep = np.ascontiguousarray(whole[:, :, positions(r, cp, T, layout)])   # my query rows: (B, nh, Tl, T)
        del whole
    schedule = ring_schedule(cp, layout, is_causal)[r]        # (source, blocks) of every step: layout.py
    m = np.full((B, nh, Tl), -np.inf, dtype=dt)               # running max of each query row
    l = np.zeros((B, nh, Tl), dtype=dt)                       # running Σ exp(s − m)
    acc = np.zeros((B, nh, Tl, hs), dtype=dt)                 # running Σ exp(s − m)·v
    dev, clock = group.device, group.device.clock
    wire = autocast_dtype()                                   # K, V on the wire: the forward's format
    grad_wire = None if wire is None else "fp32"              # partial dK, dV: fp32 accumulators
    kv = np.stack([kd, vd])                                   # (2, B, nh, Tl, hs): K and V travel together
    with group.collective("ring_attention", "ring", kv, wire_dtype=wire) as call:
        for step, (src, blocks) in enumerate(schedule):
            call.step = step
            if step < cp - 1:
                # why: the next rank attends to these keys and values at its next step; they travel
                # while this step's blocks are computed
                send = group.isend(kv, (r + 1) % cp, tag=0)
                recv = group.irecv((r - 1) % cp, tag=0)
            theirs = chunks_of(src, cp, layout)
            for i, j, kind in blocks:
                rows, cols = slice(i * c, (i + 1) * c), slice(j * c, (j + 1) * c)
                s = qs[:, :, rows] @ np.swapaxes(kv[0][:, :, cols], -1, -2)       # (B, nh, c, c) scores
                if kind == "diagonal":
                    s += causal_mask(c, dt)
                m_new = np.maximum(m[..., rows], s.max(axis=-1))                  # (B, nh, c)
                alpha = np.exp(m[..., rows] - m_new)                              # rescales the old sums
                p = np.exp(s - m_new[..., None])                                  # (B, nh, c, c)
                l[..., rows] = alpha * l[..., rows] + p.sum(axis=-1)
                p = cast_input(p)                                                 # operand of P·V
                if keep is not None:
                    kcols = slice(theirs[j] * c, (theirs[j] + 1) * c)             # the keys' global positions
                    p = p * keep[:, :, rows, kcols] * inv_keep
                acc[:, :, rows] = alpha[..., None] * acc[:, :, rows] + p @ kv[1][:, :, cols]
                m[..., rows] = m_new
            dev.compute("ring_attention", 4 * B * nh * c * c * hs * len(blocks), matmul=True)
            if step < cp - 1:
                kv = recv.wait()
                send.wait()
                _compute_waits_for_comm(clock)
        call.result(None)
    out = np.empty((B, Tl, nh, hs), dtype=dt).swapaxes(1, 2)  # (B, nh, Tl, hs) stored as (B, Tl, nh, hs)
    np.divide(acc, l[..., None], out=out)
    lse = m + np.log(l)                                       # log Σ exp(s) of every query row
    del acc, l, m, qs

    def backward(g, needs):
        D = np.einsum("bhtd,bhtd->bht", g, out)               # rowsum(dO ∘ O): (B, nh, Tl)
        dq = np.zeros((B, Tl, nh, hs), dtype=g.dtype).swapaxes(1, 2)
        own = np.zeros((2, B, nh, Tl, hs), dtype=g.dtype)     # dK, dV of my keys from my queries
        gd = cast_input(g)
        kv = np.stack([kd, vd])
        sends = []
        # why: backward runs outside autocast; K, V travel in the forward's format (``wire``)
        with group.collective("ring_attention_backward", "ring", kv, wire_dtype=wire) as call:
            for step, (src, blocks) in enumerate(schedule):
                call.step = step
                if step < cp - 1:
                    # why: K and V circulate again, as in forward (nothing of them was kept but mine)
                    send = group.isend(kv, (r + 1) % cp, tag=0)
                    recv = group.irecv((r - 1) % cp, tag=0)
                if step == 0:
                    dkv = own
                elif step == 1:
                    dkv = np.zeros_like(own)                  # the first partial dK, dV of rank src's keys
                else:
                    # why: rank r − 1 attended to rank src's keys one step ago: its partial dK, dV come with them
                    dkv = group.irecv((r - 1) % cp, tag=1).wait()
                    _compute_waits_for_comm(clock)
                theirs = chunks_of(src, cp, layout)
                for i, j, kind in blocks:
                    rows, cols = slice(i * c, (i + 1) * c), slice(j * c, (j + 1) * c)
                    kj, vj = kv[0][:, :, cols], kv[1][:, :, cols]
                    s = (qd[:, :, rows] * scale) @ np.swapaxes(kj, -1, -2)         # the block's scores again
                    if kind == "diagonal":
                        s += causal_mask(c, dt)
                    p = np.exp(s - lse[:, :, rows, None])                          # its probabilities
                    dp = gd[:, :, rows] @ np.swapaxes(vj, -1, -2)                  # dP = dO Vᵀ
                    pd = cast_input(p)
                    if keep is not None:
                        kb = keep[:, :, rows, slice(theirs[j] * c, (theirs[j] + 1) * c)] * inv_keep
                        pd, dp = pd * kb, dp * kb
                    dkv[1][:, :, cols] += np.swapaxes(pd, -1, -2) @ gd[:, :, rows]   # dV = Pᵀ dO
                    ds = cast_input(p * (dp - D[:, :, rows, None]))                # dS = P ∘ (dP − D)
                    dq[:, :, rows] += (ds @ kj) * scale                            # dQ = dS K / √d
                    dkv[0][:, :, cols] += (np.swapaxes(ds, -1, -2) @ qd[:, :, rows]) * scale   # dK = dSᵀ Q / √d
                dev.compute("ring_attention.backward", 10 * B * nh * c * c * hs * len(blocks), matmul=True)
                if step >= 1:
                    # why: these are partial dK, dV of rank src's keys: on towards src (r + 1 … src)
                    _comm_waits_for_compute(clock)
                    sends.append(_send_as(group, call, grad_wire, dkv, (r + 1) % cp, tag=1))
                if step < cp - 1:
                    kv = recv.wait()
                    send.wait()
                    _compute_waits_for_comm(clock)
            if cp > 1:
                # why: every other rank's contribution to my dK, dV, summed on the way around
                own += group.irecv((r - 1) % cp, tag=1).wait()
            for req in sends:
                req.wait()
            call.result(None)
        return dq, own[0], own[1]

    saved = [qd, kd, vd, out, lse] + ([keep] if keep is not None else [])
    return make_result(out, (q, k, v), backward, "ring_attention", saved=saved)


def merge_blocks(out1, lse1, out2, lse2):
    """The online-softmax merge of two partial attention outputs of the same queries over two
    disjoint key blocks, each normalised over its own block with log-sum-exp ``lse``:
    ``(out, lse)`` over both blocks (Dao et al. 2022; the exercise ``online_softmax_merge``).
    ``out``: (..., T, hs), ``lse``: (..., T)."""
    lse = np.logaddexp(lse1, lse2)                            # log(e^lse1 + e^lse2), without overflow
    w1, w2 = np.exp(lse1 - lse)[..., None], np.exp(lse2 - lse)[..., None]   # each block's share of the sum
    return w1 * out1 + w2 * out2, lse


def block_attention(q, k, v, mask=None):
    """Plain attention of queries over one key block, on arrays: ``(out, lse)`` with out
    normalised over this block only (what each ring step would produce alone)."""
    s = q @ np.swapaxes(k, -1, -2) / math.sqrt(q.shape[-1])
    if mask is not None:
        s = s + mask
    mx = s.max(axis=-1, keepdims=True)
    e = np.exp(s - mx)
    total = e.sum(axis=-1, keepdims=True)
    return (e / total) @ v, (mx + np.log(total))[..., 0]
