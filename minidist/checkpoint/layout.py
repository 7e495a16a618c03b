"""What each data-parallel layout holds, as fragments of named full arrays — and back.

Every layout of :mod:`minidist.parallel.data` keeps the same logical state — for every
parameter name: the parameter, its fp32 master (mixed precision), the optimizer's moments
(``exp_avg``, ``exp_avg_sq`` or ``momentum_buffer``) and the optimizer's step count — but
cut differently:

================================  =============================================================
layout                            what rank r holds (and saves)
================================  =============================================================
single rank, DDP                  everything, whole; replicated, so only rank 0 saves it
parameter server                  the server (rank 0) holds masters and states; workers only
                                  copies of the parameters: rank 0 saves everything
ZeRO-1/2                          whole parameters (replicated) but only chunk r of every
                                  bucket's flat masters and moments; it saves chunk r of all
ZeRO-3                            only chunk r of every unit: parameters too
ZeRO-Offload                      as its stage, masters and moments in the host pool
================================  =============================================================

:func:`fragments` turns what this rank holds into fragments (a flat chunk of a bucket
covers a range of one or more parameters: each piece becomes one fragment with its range
in that parameter). :func:`apply` does the reverse for *any* layout from the full arrays
that :func:`minidist.checkpoint.reshard.assemble` rebuilt — so the layout that loads need
not be the one that saved (DeepSpeed's universal checkpoint: a ZeRO optimizer's flat
partitions are cut back into per-parameter "fp32, exp_avg, exp_avg_sq" pieces and re-cut for
the new world size). Tensor/pipeline layouts join by emitting fragments with per-dimension
``slices`` (see :mod:`.format` and :mod:`.model_parallel`): each layout above then holds
only its stages' parameters, or its tensor-parallel slices of them, over ``grid.dp``.
"""
from __future__ import annotations

import numpy as np

from ..parallel.data.parameter_server import ROOT, ParameterServer
from ..parallel.data.zero1 import ZeRO1


class Fragments:
    """This rank's fragments: named arrays for the shard plus their index for the metadata.
    ``placement``: a :class:`~.model_parallel.TensorParallelPlacement` when this rank holds
    tensor-parallel slices (``shapes``: their local shapes), else None."""

    def __init__(self, placement=None, shapes=None):
        self.arrays: dict[str, np.ndarray] = {}
        self.index: list[dict] = []
        self.steps: dict[str, int] = {}           # parameter name -> optimizer step count
        self.placement, self.shapes = placement, shapes

    def add(self, name: str, kind: str, array: np.ndarray, lo: int = 0, hi: int | None = None) -> None:
        """``array`` is elements ``[lo, hi)`` of the flattened ``kind`` of ``name`` as this
        rank holds it: the full array, or its tensor-parallel slice (one fragment per block)."""
        if self.placement is not None and self.placement.sharded(name):
            for slices, block in self.placement.to_full(name, self.shapes[name], np.ravel(array), lo):
                key = f"{kind}/{name}/" + ",".join(str(a) for a, _ in slices)     # the block's corner
                self.arrays[key] = np.ascontiguousarray(block).reshape(-1)
                self.index.append({"key": key, "name": name, "kind": kind,
                                   "slices": [[int(a), int(b)] for a, b in slices]})
            return
        hi = array.size if hi is None else hi
        key = f"{kind}/{name}/{lo}"
        self.arrays[key] = np.ascontiguousarray(array).reshape(-1)
        self.index.append({"key": key, "name": name, "kind": kind, "flat": [int(lo), int(hi)]})

    def add_state(self, name: str, state: dict, lo: int = 0, hi: int | None = None, part=slice(None)) -> None:
        """The optimizer state of ``name`` (its arrays cut by ``part``) and its step count."""
        for k, a in state.items():
            if isinstance(a, np.ndarray):
                self.add(name, k, a.reshape(-1)[part], lo, hi)
        self.steps[name] = int(state["step"])


def _pairs(strategy):
    """(parameter, the array the optimizer updates: its fp32 master or itself) of a
    whole-tensor layout."""
    if strategy.mp is not None:
        return [(p, m) for p, m in zip(strategy.mp.params(), strategy.mp.masters())]
    return [(p, None) for p in strategy.params]


def fragments(strategy, placement=None) -> Fragments:
    """What this rank saves (see the module docstring); ``placement``: see :class:`Fragments`.
    Under expert parallelism each of the strategy's ``parts`` (the experts' over the
    expert-data-parallel group, the rest over the data-parallel group) saves what it holds."""
    if hasattr(strategy, "parts"):
        out = Fragments(placement, param_shapes(strategy))
        for part in strategy.parts:
            mine = fragments(part, placement)
            out.arrays.update(mine.arrays)
            out.index += mine.index
            out.steps.update(mine.steps)
        return out
    out = Fragments(placement, param_shapes(strategy))
    if isinstance(strategy, ZeRO1):
        for b in strategy.buckets:
            lo, hi = strategy.my_range(b)
            chunks = {"param": strategy.param_shard(b)}
            master, state = _sharded_state(strategy, b)
            if master is not None and strategy.precision is not None:
                chunks["master"] = master
            for p, off, n in zip(b.params, b.offsets, b.numels):
                s, e = max(lo, off), min(hi, off + n)          # my chunk ∩ this parameter
                if s >= e:
                    continue
                name = strategy.names[id(p)]
                for kind, chunk in chunks.items():
                    out.add(name, kind, chunk[s - lo:e - lo], s - off, e - off)
                if state is not None:
                    out.add_state(name, state, s - off, e - off, slice(s - lo, e - lo))
        return out
    if strategy.rank != 0:
        return out                                 # replicated (or a worker's copy): rank 0 saves it
    for p, master in _pairs(strategy):
        name = strategy.names[id(p)]
        out.add(name, "param", p.data)
        if master is not None:
            out.add(name, "master", master.data)
        state = strategy.optimizer.state.get(id(master if master is not None else p))
        if state is not None:
            out.add_state(name, state)
    return out


def _sharded_state(strategy, b):
    """(my fp32 master chunk or None, my optimizer-state chunk or None) of bucket ``b``."""
    host = strategy.host
    if host is not None and b.index in host.master:
        return host.master[b.index], host.state[b.index]
    return strategy.master_shards.get(b.index), strategy.state.get(b.index)


def param_shapes(strategy) -> dict[str, tuple]:
    """name → full shape of every parameter (ZeRO-3's released parameters keep theirs in the units)."""
    if hasattr(strategy, "parts"):                 # expert parallelism: both strategies' parameters
        return {name: shape for part in strategy.parts for name, shape in param_shapes(part).items()}
    if isinstance(strategy, ZeRO1) and strategy.stage >= 3:
        return {strategy.names[id(p)]: tuple(s) for b in strategy.buckets for p, s in zip(b.params, b.shapes)}
    return {strategy.names[id(p)]: tuple(p.shape) for p in strategy.params}


# ----------------------------------------------------------------------------- loading

def state_keys(strategy) -> set[str]:
    """The array names of this optimizer's state (``exp_avg``…), from ``init_state``."""
    return {k for k, a in strategy.optimizer.init_state((1,), np.float32).items() if isinstance(a, np.ndarray)}


def holds_optimizer_state(strategy) -> bool:
    return not (isinstance(strategy, ParameterServer) and strategy.rank != ROOT)


def apply(strategy, universal: dict) -> None:
    """Make this rank hold its layout's part of ``universal`` (name → {kind: full array,
    "step": int}). The caller has checked names, shapes and kinds (nothing half-loaded)."""
    if hasattr(strategy, "parts"):                 # expert parallelism: each strategy takes its parameters
        for part in strategy.parts:
            apply(part, universal)
        return
    keys = state_keys(strategy)
    if isinstance(strategy, ZeRO1):
        for b in strategy.buckets:
            _apply_bucket(strategy, b, universal, keys)
        return
    for p, master in _pairs(strategy):
        u = universal[strategy.names[id(p)]]
        p.data[...] = u["param"]
        if master is not None:
            master.data[...] = u["master"]
        if "step" in u and holds_optimizer_state(strategy):
            _fill(strategy.optimizer.state_for(master if master is not None else p), u, keys)


def _apply_bucket(strategy, b, universal, keys) -> None:
    lo, hi = strategy.my_range(b)
    us = [universal[strategy.names[id(p)]] for p in b.params]

    def chunk(kind):                               # my chunk of the bucket's flat ``kind``
        flat = np.zeros(b.padded, dtype=us[0][kind].dtype)                  # (p·c,) zero padding
        for u, off, n in zip(us, b.offsets, b.numels):
            flat[off:off + n] = u[kind].reshape(-1)
        return flat[lo:hi]                                                  # (c,)

    if strategy.stage >= 3:
        strategy.param_shards[b.index][...] = chunk("param")
    else:
        for p, u in zip(b.params, us):
            p.data[...] = u["param"]
    master_kind = "master" if strategy.precision is not None else None
    if strategy.host is not None:
        if b.index not in strategy.host.master:   # allocate the host arrays as the first step would
            strategy.host._allocate(b, strategy.param_shard(b))
        strategy.host.master[b.index][...] = chunk(master_kind or "param")
        state = strategy.host.state[b.index] if "step" in us[0] else None
    else:
        if master_kind:
            strategy.master_shards[b.index][...] = chunk(master_kind)
        state = strategy.state_of(b) if "step" in us[0] else None
    if state is not None:
        for k in keys:
            state[k][...] = chunk(k)
        state["step"] = max(u["step"] for u in us)


def _fill(state: dict, u: dict, keys) -> None:
    for k in keys:
        state[k][...] = u[k]
    state["step"] = u["step"]
