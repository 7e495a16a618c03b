"""Exercise: sequence parallelism's conjugate operators g and ḡ (Korthikanti et al. 2022, §4.2.2)
around a tensor-parallel MLP: all-gather and reduce-scatter along the sequence axis.

Reference: the collectives of ``gather_from_sequence_parallel_region`` (g) and
``reduce_scatter_to_sequence_parallel_region`` (ḡ) in minidist/parallel/tensor/mappings.py:
``all_gather_sequence`` and ``reduce_scatter_sequence``.
"""
from __future__ import annotations

import numpy as np

from .. import distributed as dist
from .. import functional as F
from ..parallel.tensor import mappings
from ..tensor import Tensor
from .grading import Wrong, compare
from .ranks import RANK_TIMEOUT
from .tensor_parallel_f_g import _calls, _mlp, _op

NAME = "sequence_parallel_g"
TOPIC = "tensor parallel"
TITLE = "Sequence parallel g and ḡ: all-gather and reduce-scatter along the sequence"
NOTEBOOK = "05_tensor_and_sequence_parallel"
FUNCTIONS = ("g_forward", "g_backward", "gbar_forward", "gbar_backward")
FORBIDDEN = ("minidist.parallel.tensor",)     # minidist's own g and ḡ (mappings)

STUB = '''"""Sequence parallelism (Korthikanti et al. 2022, "Reducing Activation Recomputation in Large
Transformer Models", §4.2.2): between the tensor-parallel blocks, activations stay split
along the SEQUENCE, so each of the t ranks keeps only T/t positions of LayerNorm and dropout.

Activations are (B, T, C), batch first; rank r holds positions [r·T/t, (r+1)·T/t) of axis 1,
an array of shape (B, T/t, C). The tensor-parallel MLP y = gelu(x @ A) @ B (A split by
columns, B by rows, as in Megatron) then runs as

    y_r = ḡ( gelu( g(x_r) @ A_r ) @ B_r )

* ``g`` (where f was): the MLP needs the whole sequence. Forward: ALL-GATHER along axis 1,
  (B, T/t, C) -> (B, T, C). Backward: every rank used every position, so the gradient of my
  positions is the SUM over ranks of their gradients there -> REDUCE-SCATTER along axis 1.
* ``ḡ`` (where g was): the partial outputs are summed AND split: REDUCE-SCATTER along axis 1,
  (B, T, C) -> (B, T/t, C). Backward: ALL-GATHER along axis 1.

The same bytes as Megatron's two all-reduces: a ring all-reduce IS a reduce-scatter followed by
an all-gather.

Write the four functions on arrays, with ``dist.all_gather(comm, chunk)`` (every rank's chunk,
FLATTENED and concatenated in rank order) and ``dist.reduce_scatter(comm, x)`` (my chunk of the
FLATTENED sum: the flattened x cut into t equal pieces) from ``from minidist import
distributed as dist``. Both work on flat order, so put the sequence axis first before you
flatten (np.moveaxis or transpose), and back after. The grader wraps them as autograd ops,
runs the MLP on dist.spawn ranks and compares y, dL/dx and the weight gradients with one rank
running the whole MLP, on shapes of its own drawn from the seed it prints. One all-gather and
one reduce-scatter per pass.

Not allowed (the grader looks at what your code calls or imports): minidist.parallel.tensor
(minidist's own g and ḡ). Helpers of your own may have any name.
"""
from minidist import distributed as dist


def g_forward(comm, x):
    raise NotImplementedError


def g_backward(comm, grad):
    raise NotImplementedError


def gbar_forward(comm, x):
    raise NotImplementedError


def gbar_backward(comm, grad):
    raise NotImplementedError
'''

HINTS = [
    "All-gather along axis 1: parts = dist.all_gather(comm, np.moveaxis(x, 1, 0).copy()) is (T, B, C) "
    "flattened; reshape it to (T, B, C) and move axis 0 back to 1.",
    "Reduce-scatter along axis 1: flat = np.moveaxis(x, 1, 0).reshape(-1); mine = dist.reduce_scatter(comm, flat) "
    "holds T/t positions: reshape to (T/t, B, C), move the axis back.",
    "g_backward is the reduce-scatter and gbar_backward the all-gather: the two operators are each other's "
    "mirror image.",
    "If your output mixes batch rows, you flattened with the batch axis first: the flat order must have the "
    "sequence axis outermost.",
]


def reference():
    class Reference:
        g_forward = staticmethod(mappings.all_gather_sequence)
        g_backward = staticmethod(mappings.reduce_scatter_sequence)
        gbar_forward = staticmethod(mappings.reduce_scatter_sequence)
        gbar_backward = staticmethod(mappings.all_gather_sequence)
    return Reference


def _data(seed, B, T, C):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(B, T, C)), rng.normal(size=(C, 4 * C)) / 2, rng.normal(size=(4 * C, C)) / 2, \
        rng.normal(size=(B, T, C))


def _run(sol, t, B, T, C, seed, parts):
    x, A, Bw, G = _data(seed, B, T, C)
    cols = np.array_split(np.arange(4 * C), t)
    s = T // t                                               # positions per rank

    def rank(comm):
        r = comm.rank
        xt = Tensor(x[:, r * s:(r + 1) * s].copy(), requires_grad=True)      # (B, T/t, C) my positions
        At = Tensor(A[:, cols[r]].copy(), requires_grad=True)                # (C, 4C/t) my columns
        Bt = Tensor(Bw[cols[r], :].copy(), requires_grad=True)               # (4C/t, C) my rows
        mark = comm.log.mark()
        h = F.gelu(F.linear(_op(sol.g_forward, sol.g_backward, comm, xt, "g"), At))    # (B, T, 4C/t)
        y = _op(sol.gbar_forward, sol.gbar_backward, comm, F.linear(h, Bt), "gbar")     # (B, T/t, C)
        fwd = _calls(comm.log, mark)
        mark = comm.log.mark()
        (y * Tensor(G[:, r * s:(r + 1) * s])).sum().backward()
        return y.data, xt.grad, At.grad, Bt.grad, fwd, _calls(comm.log, mark)

    outs = dist.spawn(rank, t, timeout=RANK_TIMEOUT)
    y, dx, dA, dB = _mlp(x, A, Bw, G)
    for r, (gy, gdx, gdA, gdB, fwd, bwd) in enumerate(outs):
        mine = slice(r * s, (r + 1) * s)
        label = f"{t} ranks, x of shape {x.shape} (each rank {(B, s, C)}), rank {r}"
        if "forward" in parts:
            if np.shape(gy) == y.shape:
                raise Wrong(f"{label}: your y has the whole sequence, shape {y.shape}: ḡ's forward must REDUCE-"
                            f"SCATTER along axis 1, leaving rank r its T/t = {s} positions {(B, s, C)}.")
            if np.shape(gy) == y[:, mine].shape and np.allclose(gy, _mlp(x, A[:, cols[r]], Bw[cols[r], :], G)[0][:, mine]):
                raise Wrong(f"{label}: your y is only this rank's partial product: ḡ's forward must SUM the ranks' "
                            f"partial outputs while it splits them (a reduce-scatter, not a slice).")
            compare(gy, y[:, mine], f"{label}: forward output y (positions {r * s}..{(r + 1) * s - 1})", rtol=1e-9,
                    atol=1e-12, hint="g's forward must all-gather the sequence in rank order along axis 1 (move "
                                     "the sequence axis first before you flatten)")
        if "backward" in parts:
            compare(gdx, dx[:, mine], f"{label}: dL/dx of this rank's positions", rtol=1e-9, atol=1e-12,
                    hint="g's backward must reduce-scatter along axis 1: every rank used every position")
            compare(gdA, dA[:, cols[r]], f"{label}: dL/dA for this rank's columns", rtol=1e-9, atol=1e-12,
                    hint="ḡ's backward must all-gather the output gradient along axis 1")
            compare(gdB, dB[cols[r], :], f"{label}: dL/dB for this rank's rows", rtol=1e-9, atol=1e-12)
        if "traffic" in parts:
            for phase, (ops, plain) in (("forward", fwd), ("backward", bwd)):
                if sorted(ops) == ["all_gather", "reduce_scatter"] and not plain:
                    continue
                calls = ", ".join(ops) if ops else "no collective"
                raise Wrong(f"{label}: the {phase} pass called {calls}" + (f" and {plain} plain send(s)" if plain else "")
                            + "; sequence parallelism needs exactly one dist.all_gather and one dist.reduce_scatter "
                              "per pass (an all-reduce's bytes, split in two).")


def _direct(sol, t, B, T, C, seed):
    """Each function alone: an all-gather must put every position where it belongs (an MLP is
    position-wise and would not notice a shuffled sequence; attention would)."""
    rng = np.random.default_rng(seed)
    x, grads = rng.normal(size=(B, T, C)), rng.normal(size=(t, B, T, C))      # grads[r]: rank r's full gradient
    s = T // t

    def rank(comm):
        r, mine = comm.rank, slice(comm.rank * (T // t), (comm.rank + 1) * (T // t))
        return {f: np.asarray(getattr(sol, f)(comm, (x[:, mine] if f in ("g_forward", "gbar_backward") else
                                                     grads[r]).copy()), dtype=np.float64)
                for f in FUNCTIONS}

    outs = dist.spawn(rank, t, timeout=RANK_TIMEOUT)
    total = grads.sum(0)
    for r, got in enumerate(outs):
        mine = slice(r * s, (r + 1) * s)
        for f in FUNCTIONS:
            gather = f in ("g_forward", "gbar_backward")
            want = x if gather else total[:, mine]
            what = (f"{t} ranks, rank {r}: {f} of its {(B, s, C)} slice (positions {r * s}..{(r + 1) * s - 1}) must be "
                    f"the whole (B, T, C) = {(B, T, C)} sequence in order" if gather else
                    f"{t} ranks, rank {r}: {f} of a {(B, T, C)} array must be the SUM over ranks of positions "
                    f"{r * s}..{(r + 1) * s - 1}, shape {(B, s, C)}")
            if got[f].shape == want.shape and not np.allclose(got[f], want) and \
                    np.allclose(np.sort(got[f].reshape(-1)), np.sort(want.reshape(-1))):
                raise Wrong(f"{what}: your values are all there but in the wrong places — the flat collectives "
                            f"cut and join along the OUTERMOST axis: move the sequence axis first before you "
                            f"flatten, and back after.")
            if not gather and got[f].shape == want.shape and np.allclose(got[f], grads[r][:, mine]):
                raise Wrong(f"{what}: yours is this rank's own positions of its own array, a slice: a "
                            f"reduce-scatter SUMS the ranks' arrays before it splits them.")
            compare(got[f], want, what, rtol=1e-9, atol=1e-12)


def held_out(sol, rng):
    """2 to 4 ranks; batch, positions per rank and width of the grader's."""
    t = int(rng.integers(2, 5))
    _direct(sol, t, int(rng.integers(2, 4)), t * int(rng.integers(1, 4)), int(rng.integers(2, 6)),
            int(rng.integers(1 << 30)))
    _run(sol, t, int(rng.integers(1, 4)), t * int(rng.integers(1, 4)), int(rng.integers(2, 6)),
         int(rng.integers(1 << 30)), ("forward", "backward", "traffic"))


CHECKS = [
    ("each operator alone, 2 ranks: all-gathers put every position in place, reduce-scatters sum",
     lambda sol: _direct(sol, 2, 2, 4, 3, 5)),
    ("2 ranks: the forward output equals one rank's, split along the sequence",
     lambda sol: _run(sol, 2, 2, 4, 3, 0, ("forward",))),
    ("2 ranks: dL/dx and the weight shards' gradients equal one rank's",
     lambda sol: _run(sol, 2, 2, 4, 3, 1, ("backward",))),
    ("4 ranks, batch 3: forward and backward", lambda sol: _run(sol, 4, 3, 8, 4, 2, ("forward", "backward"))),
    ("traffic: one all-gather and one reduce-scatter per pass", lambda sol: _run(sol, 4, 2, 4, 3, 3, ("traffic",))),
    ("held out: rank counts and shapes of the grader's", held_out),
]
