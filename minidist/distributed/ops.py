"""Small pieces every collective shares: reduction ops, chunking with padding, the
power-of-two "fold" of MPICH, and the table of algorithms.

**Padding.** Chunked algorithms (ring, recursive halving, …) cut the *flattened* input of
``n`` elements into ``p`` equal chunks of ``c = ceil(n/p)`` elements, the last ones padded
with zeros. ``reduce_scatter`` returns this rank's padded chunk (``c`` elements);
``all_reduce``/``broadcast`` cut the padding off again and restore the input's shape.
The padding is sent, so byte counts are ``p·c`` elements, exactly ``n`` when ``p`` divides ``n``.

**Non-power-of-two sizes** (Thakur, Rabenseifner & Gropp 2005, §4; MPICH): recursive
doubling/halving need ``2^k`` ranks. With ``p = pof2 + rem``, the first ``2·rem`` ranks
pair up: each even rank hands its data to the odd rank above it and sits out, so
``pof2`` ranks remain (new rank ``r//2`` for odd ``r < 2·rem``, ``r − rem`` above); after
the power-of-two algorithm the odd ranks hand the result back. New rank ``i`` stands for
the blocks of the old ranks it represents, ``first_block(i) … first_block(i+1)−1``.
"""
from __future__ import annotations

import numpy as np

REDUCE_OPS = {"sum": np.add, "mean": np.add, "max": np.maximum, "min": np.minimum, "prod": np.multiply}


def contiguous(x) -> np.ndarray:
    """``x`` as a C-ordered array of its own shape, copied only if it is not one already
    (``np.ascontiguousarray`` would also turn a 0-d array into shape (1,), and a collective
    returns arrays of its input's shape)."""
    a = np.asarray(x)
    return a if a.flags.c_contiguous else np.ascontiguousarray(a)


def check_op(op: str) -> None:
    if op not in REDUCE_OPS:
        raise ValueError(f"unknown reduction op {op!r}; choose one of {sorted(REDUCE_OPS)}")


def reduce_into(acc: np.ndarray, other: np.ndarray, op: str) -> None:
    """``acc = acc (op) other`` in place, without a temporary (np.add(out=...)). Integer sums
    and products that leave the dtype's range raise instead of wrapping around as NumPy's do."""
    other = other.reshape(acc.shape)
    if acc.dtype.kind in "iu" and op in ("sum", "mean", "prod"):
        _check_integer_range(acc, other, op)
    REDUCE_OPS[op](acc, other, out=acc)


def _check_integer_range(a: np.ndarray, b: np.ndarray, op: str) -> None:
    info = np.iinfo(a.dtype)
    if op == "prod":        # in float64: exact far below the limit, so only near-limit products are approximate
        bad = np.abs(a.astype(np.float64) * b.astype(np.float64)) > float(info.max)
    elif a.dtype.kind == "u":
        bad = np.add(a, b) < a                         # unsigned: the sum wrapped below an operand
    else:
        r = np.add(a, b)                               # signed: wrapped iff the sign differs from both operands'
        bad = ((a ^ r) & (b ^ r)) < 0
    if bad.any():
        raise OverflowError(f"{op} of {a.dtype} values overflows [{info.min}, {info.max}] (NumPy would wrap "
                            f"around silently); reduce float64 values, or smaller integers")


def finish(x: np.ndarray, op: str, p: int) -> np.ndarray:
    """Turn a sum into a mean at the very end (every other op is already final)."""
    if op != "mean":
        return x
    if np.issubdtype(x.dtype, np.floating):
        np.divide(x, p, out=x)
        return x
    return x / p


def as_chunks(x, p: int) -> tuple[np.ndarray, int]:
    """A fresh ``(p, c)`` copy of the flattened ``x``, zero-padded; returns it and ``n``."""
    flat = np.ravel(np.asarray(x))
    n = flat.size
    c = -(-n // p)
    buf = np.empty((p, c), dtype=flat.dtype)      # (p, c)
    buf.reshape(-1)[:n] = flat
    buf.reshape(-1)[n:] = 0       # only the padding: zeroing the whole buffer first costs one more pass
    return buf, n


def unchunk(buf: np.ndarray, n: int, shape) -> np.ndarray:
    """Inverse of :func:`as_chunks`: drop the padding and restore ``shape``."""
    return buf.reshape(-1)[:n].reshape(shape)


# -- MPICH's fold for recursive doubling / halving on any p --------------------------------
def fold_layout(p: int) -> tuple[int, int]:
    """``(pof2, rem)``: the largest power of two <= p and how many ranks are left over."""
    pof2 = 1 << (p.bit_length() - 1)
    return pof2, p - pof2


def new_rank(r: int, rem: int) -> int:
    """Rank among the pof2 survivors, or -1 for an even rank < 2·rem that sits out."""
    if r < 2 * rem:
        return r // 2 if r % 2 else -1
    return r - rem


def old_rank(nr: int, rem: int) -> int:
    return 2 * nr + 1 if nr < rem else nr + rem


def first_block(nr: int, rem: int) -> int:
    """First of the blocks that new rank ``nr`` stands for (two blocks if nr < rem)."""
    return 2 * nr if nr < rem else nr + rem


# -- the algorithm table ------------------------------------------------------------------
def pick(table: dict, op: str, algorithm: str):
    try:
        return table[algorithm]
    except KeyError:
        raise ValueError(f"unknown {op} algorithm {algorithm!r}; choose one of {sorted(table)}") from None
