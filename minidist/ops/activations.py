"""Softmax, log-softmax, GELU (tanh approximation, as GPT-2) and dropout."""
from __future__ import annotations

import math

import numpy as np

from ..tensor import Tensor, as_tensor, is_grad_enabled, make_result
from .intra_op import num_threads, parallel_for


def softmax(x, axis: int = -1) -> Tensor:
    x = as_tensor(x)
    e = np.exp(x.data - x.data.max(axis=axis, keepdims=True))
    y = e / e.sum(axis=axis, keepdims=True)

    def backward(g, needs):
        # dx = y * (g - Σ g·y): the Jacobian of softmax applied without forming it
        return (y * (g - (g * y).sum(axis=axis, keepdims=True)),)
    return make_result(y, (x,), backward, "softmax", saved=[y], flops=5 * x.size)


def log_softmax(x, axis: int = -1) -> Tensor:
    x = as_tensor(x)
    shifted = x.data - x.data.max(axis=axis, keepdims=True)
    y = shifted - np.log(np.exp(shifted).sum(axis=axis, keepdims=True))

    def backward(g, needs):
        return (g - np.exp(y) * g.sum(axis=axis, keepdims=True),)
    return make_result(y, (x,), backward, "log_softmax", saved=[y], flops=5 * x.size)


_GELU_C = math.sqrt(2.0 / math.pi)

# Elementwise chains run over blocks of this many bytes per array: GELU's forward touches
# four such blocks (x, y, dGELU/dx and one scratch), about a core's L2 cache (0.5-2 MB),
# instead of streaming megabyte-sized temporaries through memory once per arithmetic step.
BLOCK_BYTES = 256 * 1024


def _blocks(n: int, itemsize: int):
    """Slices covering range(n) in pieces of BLOCK_BYTES."""
    step = BLOCK_BYTES // itemsize
    for start in range(0, n, step):
        yield slice(start, min(start + step, n))


def _gelu_tanh(xd: np.ndarray, out: np.ndarray, square: np.ndarray | None = None) -> np.ndarray:
    """tanh(√(2/π)·(x + 0.044715·x³)), computed in place in ``out`` (x³ = (x·x)·x, from
    ``square`` = x·x when the caller has it)."""
    if square is None:
        t = np.multiply(xd, xd, out=out)
        t *= xd
    else:
        t = np.multiply(square, xd, out=out)
    t *= 0.044715
    t += xd
    t *= _GELU_C
    return np.tanh(t, out=t)


def gelu(x, approximate: str = "tanh") -> Tensor:
    """0.5·x·(1 + tanh(√(2/π)·(x + 0.044715·x³))) — Hendrycks & Gimpel 2016, GPT-2's form:
    torch's ``F.gelu(x, approximate="tanh")``. torch's default, ``approximate="none"`` (the
    exact x·Φ(x) with erf), is not built and is refused by name; the two differ by up to ~5e-4.

    What a GPU keeps for backward is the input alone (as PyTorch does), and that is what is
    charged. When a gradient will be wanted, the forward — which has the tanh at hand —
    also writes the local derivative dGELU/dx into a buffer of x's size (NumPy's, not the
    simulated device's), so backward is one multiply instead of the tanh again and a dozen
    elementwise steps; the steps and their order are the ones backward used to run, so
    the gradient is the same to the last bit. Both directions walk the tensor in L2-sized
    blocks (``_blocks``); the arithmetic is the same, step for step, as on the whole array.
    With intra-op threads (:mod:`minidist.ops.intra_op`) the blocks are shared out among them.
    """
    if approximate != "tanh":
        raise ValueError(f"gelu: approximate={approximate!r} is not built; minidist's GELU is GPT-2's tanh form, "
                         f"torch's approximate='tanh' (torch's default 'none' uses erf): pass approximate='tanh'")
    x = as_tensor(x)
    xd = x.data
    xf = xd.reshape(-1)                                    # flat view (a copy only if strided)
    y = np.empty(xd.shape, dtype=xd.dtype)
    yf = y.reshape(-1)
    grad = x.requires_grad and is_grad_enabled()
    d = np.empty(xd.shape, dtype=xd.dtype) if grad else None     # dGELU/dx, for backward
    df = d.reshape(-1) if grad else None
    blocks = list(_blocks(xf.size, xf.itemsize))

    def run(first, last, piece):                           # blocks[first:last]; threads: see intra_op
        if grad:   # one block of scratch; the tanh is kept in y's block, which it becomes
            dinner = np.empty(min(BLOCK_BYTES // xf.itemsize, xf.size), dtype=xd.dtype)
        for blk in blocks[first:last]:
            xb = xf[blk]
            if grad:
                di = np.multiply(xb, xb, out=dinner[:xb.size])            # x·x, for x³ and d(inner)/dx
                tb = _gelu_tanh(xb, out=yf[blk], square=di)
                _gelu_derivative(xb, tb, di, df[blk])                     # turns tb into 1 + t
                tb *= xb                                                  # y = (1 + t)·x·0.5
                tb *= 0.5
            else:
                yb = _gelu_tanh(xb, out=yf[blk])
                yb += 1.0
                yb *= xb
                yb *= 0.5
    parallel_for(len(blocks), run)

    def backward(g, needs):
        out = np.empty_like(d)
        if num_threads() > 1 and g.shape == d.shape and g.dtype == d.dtype and g.flags.c_contiguous:
            gf, of = g.reshape(-1), out.reshape(-1)       # the same products, block by block

            def times(first, last, piece):
                for blk in blocks[first:last]:
                    np.multiply(df[blk], gf[blk], out=of[blk])
            parallel_for(len(blocks), times)
            return (out,)
        return (np.multiply(d, g, out=out),)
    return make_result(y, (x,), backward, "gelu", saved=[xd], flops=12 * x.size)


def _gelu_derivative(xb, tb, di, db):
    """db = 0.5·x·(1 - t²)·dinner + 0.5·(1 + t), dinner = √(2/π)·(1 + 3·0.044715·x²), from
    ``di`` = x·x (overwritten); leaves 1 + t in ``tb``."""
    di *= 3 * 0.044715 * _GELU_C
    di += _GELU_C
    np.multiply(tb, tb, out=db)
    np.subtract(1.0, db, out=db)
    db *= xb
    db *= di
    tb += 1.0
    db += tb
    db *= 0.5


def check_dropout_p(p) -> None:
    """A dropout probability must be in [0, 1): 1 would scale by 1/0, above 1 by a negative
    number, below 0 would keep everything and scale it down. NaN fails the test too."""
    if not 0.0 <= p < 1.0:
        raise ValueError(f"dropout probability must be in [0, 1), got {p}")


def dropout(x, p: float = 0.5, training: bool = True, rng: np.random.Generator | None = None) -> Tensor:
    """Inverted dropout: zero each element with probability ``p``, scale the rest by 1/(1-p).

    ``rng``: where the uniform draws come from (anything with ``random(shape)``: a NumPy
    Generator, or the trainer's per-row keyed :class:`minidist.nn.DropoutRNG`); the mask is
    saved for backward (1 byte per element).
    """
    x = as_tensor(x)
    check_dropout_p(p)
    if not training or p == 0.0:
        return x
    rng = rng if rng is not None else np.random.default_rng()
    keep = rng.random(x.shape) >= p                      # bool mask, 1 byte/element
    scale = np.asarray(1.0 / (1.0 - p), dtype=x.dtype)
    y = x.data * keep * scale
    return make_result(y, (x,), lambda g, needs: (g * keep * scale,), "dropout", saved=[keep], flops=x.size)
