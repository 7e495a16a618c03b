"""Exercise: expert parallelism's dispatch and combine — the slot buffer over ep ranks by all-to-all.

Reference: :func:`minidist.parallel.expert.slots_to_experts` (dispatch) and
:func:`minidist.parallel.expert.experts_to_slots` (combine), which the MoE layer runs as
autograd ops under ``parallel.expert``.
"""
from __future__ import annotations

import numpy as np

from ..parallel.expert import experts_to_slots, slots_to_experts
from .grading import Wrong, diagnose, on_case
from .ranks import check_results, run_on_ranks

NAME = "moe_all_to_all"
TOPIC = "mixture of experts"
TITLE = "Expert parallelism: dispatch and combine by all-to-all"
NOTEBOOK = "12_mixture_of_experts"
FUNCTIONS = ("dispatch", "combine")
FORBIDDEN_IMPORTS = ("minidist.parallel", "minidist.moe", "minidist.distributed.all_gather",
                     "minidist.distributed.broadcast", "minidist.distributed.all_reduce")

STUB = '''"""Expert parallelism's two all-to-alls (GShard, Lepikhin et al. 2020 §2.3; DeepSpeed-MoE,
Rajbhandari et al. 2022).

E experts are spread over the ep = comm.size ranks of an expert-parallel group, E/ep whole
experts each: rank r holds experts r·E/ep … (r+1)·E/ep − 1. Every rank has routed its OWN
tokens into a slot buffer ``buf`` of shape (E, C, h): buf[e, c] is the token in slot c of
expert e (C slots per expert, h numbers per token) — for every expert, also the ones other
ranks hold.

Write two functions.

``dispatch(comm, buf)`` -> (E/ep, ep·C, h): the slots of MY experts from EVERY rank. For my
    local expert i (global expert r·E/ep + i), positions j·C … (j+1)·C − 1 hold rank j's
    slots of that expert, buf_j[r·E/ep + i, 0 … C−1], rank by rank.

``combine(comm, y)`` -> (E, C, h): the way back. ``y`` is what my experts computed, laid out
    as dispatch returns it; return every expert's output for MY slots: out[e, c] comes from
    the rank holding expert e, from its positions (my rank)·C … (my rank + 1)·C − 1.

So combine(comm, dispatch(comm, buf)) == buf on every rank.

Use ``minidist.distributed.all_to_all(comm, blocks)``: ``blocks`` (ep, …) — block j goes to
rank j — returns (ep, …) with row j from rank j (MPI_Alltoall); or comm.send / comm.recv /
comm.sendrecv. Each call must send exactly what other ranks need: per rank (ep − 1)/ep · E · C · h
elements (the block you keep does not travel) — the grader reads comm.log. Return new arrays
(do not modify ``buf`` or ``y``) in their dtype. Any ep ≥ 1 dividing E, any C and h.

Not allowed: minidist.parallel and minidist.moe (minidist's own expert parallelism), and
dist.all_gather, dist.broadcast and dist.all_reduce (they would send every rank everything).
"""
import numpy as np
from minidist import distributed as dist


def dispatch(comm, buf):
    """(E, C, h) my slots of every expert -> (E/ep, ep·C, h) every rank's slots of my experts."""
    raise NotImplementedError


def combine(comm, y):
    """(E/ep, ep·C, h) my experts' outputs -> (E, C, h) every expert's output for my slots."""
    raise NotImplementedError
'''

HINTS = [
    "buf.reshape(ep, E // ep, C, h): block j holds the slots of rank j's experts — exactly what all_to_all "
    "sends to rank j.",
    "all_to_all returns (ep, E/ep, C, h) with row j from rank j. Put the source rank next to the slots "
    "(transpose(1, 0, 2, 3)) BEFORE reshaping to (E/ep, ep·C, h); a reshape alone mixes experts and ranks.",
    "combine undoes it: y.reshape(E/ep, ep, C, h).transpose(1, 0, 2, 3) makes block j = rank j's slots; "
    "after the all-to-all, row j holds rank j's experts: reshape (ep·E/ep, C, h) = (E, C, h).",
]


def reference():
    class Reference:
        @staticmethod
        def dispatch(comm, buf):
            return slots_to_experts(comm, buf)

        @staticmethod
        def combine(comm, y):
            return experts_to_slots(comm, y)
    return Reference


# -- the layouts on every rank's data at once (the grader's truth and the typical mistakes) ------
def _dispatch_all(bufs, wrong=""):
    ep, (E, C, h) = len(bufs), bufs[0].shape
    El = E // ep
    out = []
    for r in range(ep):
        if wrong == "round_robin":                       # rank r "holds" experts r, r+ep, …
            rows = np.stack([b[r::ep] for b in bufs])    # (ep, E/ep, C, h)
        else:
            rows = np.stack([b[r * El:(r + 1) * El] for b in bufs])
        if wrong == "no_transpose":
            out.append(rows.reshape(El, ep * C, h))
        else:
            out.append(rows.transpose(1, 0, 2, 3).reshape(El, ep * C, h))
    return out


def _combine_all(ys, wrong=""):
    ep, (El, S, h) = len(ys), ys[0].shape
    C = S // ep
    out = []
    for r in range(ep):
        if wrong == "no_transpose":
            parts = [y.reshape(ep, El, C, h)[r] for y in ys]             # (E/ep, C, h) per source rank
        else:
            parts = [y.reshape(El, ep, C, h)[:, r] for y in ys]
        out.append(np.concatenate(parts, axis=0))                      # (E, C, h)
    return out


DISPATCH_MISTAKES = [
    (lambda bufs, r: _dispatch_all(bufs, "no_transpose")[r],
     "you reshaped all_to_all's (ep, E/ep, C, h) straight to (E/ep, ep·C, h): the source rank must sit next "
     "to the slots — transpose(1, 0, 2, 3) first, or each expert gets another expert's slots"),
    (lambda bufs, r: _dispatch_all(bufs, "round_robin")[r],
     "you sent rank j the experts j, j+ep, j+2·ep, …; rank j holds the CONSECUTIVE experts j·E/ep … "
     "(j+1)·E/ep − 1 (buf.reshape(ep, E/ep, C, h) makes block j)"),
]
COMBINE_MISTAKES = [
    (lambda ys, r: _combine_all(ys, "no_transpose")[r],
     "you cut y (E/ep, ep·C, h) into blocks with y.reshape(ep, E/ep, C, h): rank j's slots are positions "
     "j·C … (j+1)·C − 1 of EVERY local expert — y.reshape(E/ep, ep, C, h).transpose(1, 0, 2, 3)"),
]


def _tagged(ep, E, C, h, dtype=np.float64, seed=None):
    """Every rank's buffer; by default each element says where it came from:
    1000·rank + 10·expert + slot (+ h index / 100)."""
    if seed is not None:
        rng = np.random.default_rng(seed)
        return [rng.normal(size=(E, C, h)).astype(dtype) for _ in range(ep)]
    e, c, k = np.meshgrid(np.arange(E), np.arange(C), np.arange(h), indexing="ij")
    return [(1000.0 * r + 10.0 * e + c + k / 100.0).astype(dtype) for r in range(ep)]


def _describe(ep, E, C, h, dtype):
    return f"ep = {ep} ranks, E = {E} experts, C = {C} slots, h = {h}, {np.dtype(dtype).name}"


def _traffic(sends, ep, E, C, h, itemsize, what):
    want = (ep - 1) * (E // ep) * C * h * itemsize
    for r, msgs in enumerate(sends):
        got = sum(m.nbytes for m in msgs)
        if got != want:
            why = ""
            if got == (ep - 1) * E * C * h * itemsize:
                why = " You sent every other rank your WHOLE buffer; each needs only the block of its experts."
            elif got == ep * (E // ep) * C * h * itemsize or got == E * C * h * itemsize:
                why = " You also sent the block you keep: it does not need to travel."
            raise Wrong(f"{what}: rank {r} sent {got} bytes; an all-to-all sends (ep − 1)/ep · E · C · h · itemsize "
                        f"= {want} bytes per rank.{why}")


def _run(sol, fn_name, inputs, truth, mistakes, what, check_bytes=True):
    ep = len(inputs)
    E = inputs[0].shape[0] * (ep if fn_name == "combine" else 1)
    C = inputs[0].shape[1] // (ep if fn_name == "combine" else 1)
    h = inputs[0].shape[2]
    outs, sends = run_on_ranks(getattr(sol, fn_name), inputs)
    wide = [x.astype(np.float64) for x in inputs]
    try:
        check_results(outs, truth, ep, f"{what}: {fn_name}", dtype=inputs[0].dtype)
    except Wrong as exc:
        bad = next((r for r, (g, t) in enumerate(zip(outs, truth))
                    if np.shape(g) != t.shape or not np.allclose(np.asarray(g, dtype=np.float64), t, rtol=1e-5)), 0)
        why = diagnose(outs[bad], [(lambda xs, f=f: f(xs, bad), m) for f, m in mistakes], wide, rtol=1e-5, atol=1e-9)
        raise Wrong(f"{exc}" + (f"\nY{why[1:]}." if why else "")) from None
    if check_bytes:
        _traffic(sends, ep, E, C, h, inputs[0].itemsize, f"{what}: {fn_name}")
    return outs


def _check_dispatch(ep, E, C, h):
    def check(sol):
        bufs = _tagged(ep, E, C, h)
        _run(sol, "dispatch", bufs, _dispatch_all(bufs), DISPATCH_MISTAKES,
             _describe(ep, E, C, h, np.float64) + " (element = 1000·rank + 10·expert + slot)")
    return check


def _check_combine(ep, E, C, h):
    def check(sol):
        ys = _dispatch_all(_tagged(ep, E, C, h))
        _run(sol, "combine", ys, _combine_all(ys), COMBINE_MISTAKES, _describe(ep, E, C, h, np.float64))
    return check


def check_round_trip(sol):
    ep, E, C, h = 4, 8, 3, 2
    bufs = _tagged(ep, E, C, h, seed=7)
    what = _describe(ep, E, C, h, np.float64)
    there = _run(sol, "dispatch", bufs, _dispatch_all(bufs), DISPATCH_MISTAKES, what)
    _run(sol, "combine", [np.asarray(t, dtype=np.float64) for t in there], bufs, COMBINE_MISTAKES,
         what + ", combine(dispatch(buf))")


def held_out(sol, rng):
    """ep 1, 2, 3 or 4; E = ep × 1..3 experts; C and h from 1 to 5; float32 and float64."""
    for i in range(5):
        ep = int(rng.choice([1, 2, 3, 4]))
        E = ep * int(rng.integers(1, 4))
        C, h = int(rng.integers(1, 6)), int(rng.integers(1, 6))
        dtype = (np.float64, np.float32)[i % 2]
        bufs = _tagged(ep, E, C, h, dtype, seed=int(rng.integers(1 << 30)))
        what = "held out: " + _describe(ep, E, C, h, dtype)
        with on_case(sol, what, "the statement promises any ep dividing E, any C and h, float32 and float64"):
            ys = _run(sol, "dispatch", bufs, _dispatch_all(bufs), DISPATCH_MISTAKES, what)
            back = [np.asarray(y, dtype=dtype) for y in ys]
            _run(sol, "combine", back, bufs, COMBINE_MISTAKES, what)


CHECKS = [
    ("dispatch on 2 ranks, 4 experts", _check_dispatch(2, 4, 3, 2)),
    ("dispatch on 4 ranks, 8 experts", _check_dispatch(4, 8, 2, 3)),
    ("combine on 2 ranks, 4 experts", _check_combine(2, 4, 3, 2)),
    ("combine(dispatch(buf)) == buf on 4 ranks", check_round_trip),
    ("held out: other ep, E, C, h, float32", held_out),
]
