"""Exercise: Megatron's conjugate operators f and g, run inside a tensor-parallel MLP.

Reference: ``copy_to_tensor_model_parallel_region`` (f) and ``reduce_from_tensor_model_parallel_region``
(g) in minidist/parallel/tensor/mappings.py, whose collective is ``mappings.all_reduce``.
"""
from __future__ import annotations

import numpy as np

from .. import distributed as dist
from .. import functional as F
from ..parallel.tensor import mappings
from ..tensor import Tensor, make_result
from .grading import Wrong, compare
from .ranks import RANK_TIMEOUT

NAME = "tensor_parallel_f_g"
TOPIC = "tensor parallel"
TITLE = "Megatron's f and g: forward and backward of a column -> row parallel MLP"
NOTEBOOK = "05_tensor_and_sequence_parallel"
FUNCTIONS = ("f_forward", "f_backward", "g_forward", "g_backward")
FORBIDDEN = ("minidist.parallel.tensor",)     # Megatron's f and g as minidist writes them (mappings)

STUB = '''"""Megatron-LM's f and g (Shoeybi et al. 2019, §3): the only communication a tensor-parallel MLP needs.

The MLP y = gelu(x @ A) @ B is split over t ranks: A by COLUMNS (rank r holds A[:, cols_r]),
B by ROWS (rank r holds B[rows_r, :]). Every rank gets the whole input x and computes

    y = g( gelu( f(x) @ A_r ) @ B_r )

* ``f`` sits where the replicated x enters the column-parallel layer. Forward: identity.
  Backward: every rank used the whole x with its own columns of A, so dL/dx is the SUM of
  the ranks' partial gradients -> all-reduce.
* ``g`` sits where the row-parallel partial outputs leave. Forward: y is the SUM of the
  ranks' partial products -> all-reduce. Backward: the gradient of a sum is the same for
  every term -> identity.

Write the four functions below on arrays. ``comm`` is the tensor-parallel communicator;
use ``dist.all_reduce(comm, array)`` (``from minidist import distributed as dist``), which
returns the sum over the ranks. The grader wraps them as autograd ops of minidist's engine,
runs the split MLP on dist.spawn ranks, and compares y, dL/dx, dL/dA_r and dL/dB_r with one
rank running the whole MLP, on inputs x of shape (..., C) — (N, C) or (B, T, C), sizes of
its own, drawn from the seed it prints. One all-reduce forward and one backward per MLP — no
more; any all-reduce algorithm will do (the grader counts dist.all_reduce calls in
comm.log, not messages).

Not allowed (the grader looks at what your code calls or imports): minidist.parallel.tensor
(minidist's own f and g). Helpers of your own may have any name.
"""
from minidist import distributed as dist


def f_forward(comm, x):
    raise NotImplementedError


def f_backward(comm, grad):
    raise NotImplementedError


def g_forward(comm, x):
    raise NotImplementedError


def g_backward(comm, grad):
    raise NotImplementedError
'''

HINTS = [
    "Two of the four functions are one line: `return x` (f forward) and `return grad` (g backward).",
    "The other two are `return dist.all_reduce(comm, ...)`: g in the forward pass, f in the backward pass.",
    "If y is t times too large, you all-reduce in f's forward: the input is already whole on every rank.",
]


def reference():
    class Reference:
        f_forward = staticmethod(lambda comm, x: x)
        f_backward = staticmethod(lambda comm, grad: mappings.all_reduce(comm, grad))
        g_forward = staticmethod(lambda comm, x: mappings.all_reduce(comm, x))
        g_backward = staticmethod(lambda comm, grad: grad)
    return Reference


def _op(forward, backward, comm, x, name):
    """The student's pair as one autograd op of the engine (like mappings._identity_op)."""
    out = np.asarray(forward(comm, x.data.copy()), dtype=np.float64)
    return make_result(out, (x,), lambda g, needs: (np.asarray(backward(comm, g.copy()), dtype=np.float64),), name)


def _weights(t, seed=0, shape=(2, 3), C=4):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(*shape, C)), rng.normal(size=(C, 4 * C)) / 2, rng.normal(size=(4 * C, C)) / 2, \
        rng.normal(size=(*shape, C))


def _mlp(x, A, Bw, G):
    """Forward and backward of y = gelu(x @ A) @ B on Tensors; loss = sum(y * G)."""
    xt, At, Bt = (Tensor(a.copy(), requires_grad=True) for a in (x, A, Bw))
    y = F.linear(F.gelu(F.linear(xt, At)), Bt)
    (y * Tensor(G)).sum().backward()
    return y.data, xt.grad, At.grad, Bt.grad


def _calls(log, since):
    """The collectives and the plain messages this rank logged since ``since``."""
    done = log.since(since)
    return [c.op for c in done.collectives], len([e for e in done.messages() if e.op == "send"])


def _run(sol, t, parts, seed=0, shape=(2, 3), C=4):
    x, A, Bw, G = _weights(t, seed, shape, C)
    cols = np.array_split(np.arange(A.shape[1]), t)

    def rank(comm):
        xt = Tensor(x.copy(), requires_grad=True)
        At = Tensor(A[:, cols[comm.rank]].copy(), requires_grad=True)      # (C, 4C/t) my columns
        Bt = Tensor(Bw[cols[comm.rank], :].copy(), requires_grad=True)     # (4C/t, C) my rows
        mark = comm.log.mark()
        h = F.gelu(F.linear(_op(sol.f_forward, sol.f_backward, comm, xt, "f"), At))   # (..., 4C/t)
        y = _op(sol.g_forward, sol.g_backward, comm, F.linear(h, Bt), "g")              # (..., C)
        fwd = _calls(comm.log, mark)
        mark = comm.log.mark()
        (y * Tensor(G)).sum().backward()
        return y.data, xt.grad, At.grad, Bt.grad, fwd, _calls(comm.log, mark)

    outs = dist.spawn(rank, t, timeout=RANK_TIMEOUT)
    y, dx, dA, dB = _mlp(x, A, Bw, G)
    for r, (gy, gdx, gdA, gdB, fwd, bwd) in enumerate(outs):
        label = f"{t} ranks, x of shape {x.shape}, rank {r}"
        if "forward" in parts:
            if np.shape(gy) == y.shape and np.allclose(gy, _mlp(t * x, A, Bw, G)[0]):
                raise Wrong(f"{label}: your y is the MLP of {t}·x: f's forward all-reduces the input, but f's "
                            f"forward must be the identity — x is already whole on every rank.")
            if np.shape(gy) == y.shape and np.allclose(gy, t * y):
                raise Wrong(f"{label}: y is {t}× the one-rank output: you all-reduce twice in the forward pass.")
            compare(gy, y, f"{label}: forward output y", rtol=1e-9, atol=1e-12,
                    hint="g's forward must SUM the ranks' partial outputs (all-reduce)")
        if "backward" in parts:
            if np.shape(gdx) == dx.shape and np.allclose(gdx, t * dx):
                raise Wrong(f"{label}: dL/dx is {t}× too large: g's backward must be the identity (the gradient of "
                            f"a sum reaches every term unchanged), not another all-reduce.")
            partial = _mlp(x, A[:, cols[r]], Bw[cols[r], :], G)[1]      # through this rank's columns only
            if np.shape(gdx) == dx.shape and np.allclose(gdx, partial) and not np.allclose(gdx, dx):
                raise Wrong(f"{label}: dL/dx is only this rank's partial gradient (through its columns of A); "
                            f"f's backward must all-reduce it: every rank used the whole x.")
            compare(gdx, dx, f"{label}: dL/dx", rtol=1e-9, atol=1e-12)
            compare(gdA, dA[:, cols[r]], f"{label}: dL/dA for this rank's columns", rtol=1e-9, atol=1e-12)
            compare(gdB, dB[cols[r], :], f"{label}: dL/dB for this rank's rows", rtol=1e-9, atol=1e-12)
        if "traffic" in parts:
            for phase, (ops, plain) in (("forward", fwd), ("backward", bwd)):
                if ops == ["all_reduce"] and not plain:
                    continue
                calls = ", ".join(ops) if ops else "no collective"
                extra = f" and {plain} plain send(s)" if plain else ""
                raise Wrong(f"{label}: the {phase} pass called {calls}{extra}; Megatron's MLP needs exactly one "
                            f"dist.all_reduce in the forward pass (g) and one in the backward pass (f), with any "
                            f"algorithm.")


def held_out(sol, rng):
    """2 or 3 ranks; x of shape (N, C) or (B, T, C) with sizes of the grader's."""
    for shape in ((int(rng.integers(1, 6)),), tuple(int(v) for v in rng.integers(1, 4, size=2))):
        _run(sol, int(rng.integers(2, 4)), ("forward", "backward", "traffic"), int(rng.integers(1 << 30)), shape,
             C=int(rng.integers(2, 6)))


CHECKS = [
    ("2 ranks: the forward output equals one rank's", lambda sol: _run(sol, 2, ("forward",))),
    ("2 ranks: dL/dx and the weight shards' gradients equal one rank's", lambda sol: _run(sol, 2, ("backward",))),
    ("4 ranks: forward and backward", lambda sol: _run(sol, 4, ("forward", "backward"))),
    ("traffic: one all-reduce forward (g), one backward (f), any algorithm", lambda sol: _run(sol, 4, ("traffic",))),
    ("held out: x of shape (N, C) and (B, T, C), sizes and rank counts of the grader's", held_out),
]
