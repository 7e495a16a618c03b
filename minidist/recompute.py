"""Activation checkpointing: keep a function's inputs, forget its activations, run it again
in backward (Chen et al. 2016, "Training Deep Nets with Sublinear Memory Cost";
``torch.utils.checkpoint``; Megatron-LM's ``recompute``).

``y = checkpoint(fn, *inputs)`` runs ``fn`` without recording a graph — so none of its
intermediate arrays is charged as "activations" — and saves only ``inputs``. Its backward:

1. puts back what made the forward what it was: the autocast format and every dropout
   layer's random key (a pipeline may have run other micro-batches' forwards in between,
   each setting its own key), as torch's ``preserve_rng_state`` does;
2. runs ``fn`` again on the saved inputs, this time recording (the *recompute*: its FLOPs
   are charged again and its ops appear on the timeline as ``recompute <op>``);
3. back-propagates the upstream gradient through that graph, which frees its activations
   as it goes; the parameters' gradients accumulate as usual (DDP/ZeRO hooks fire), and
   the inputs' gradients are the op's result.

Under a zero-bubble schedule's split backward (``defer_weight_grad``) step 3 computes only
input gradients and keeps the recomputed graph's weight-gradient work for the ``W`` pass.
The numbers are bit-identical to running ``fn`` without checkpointing: the same ops on the
same values in the same order.

**Side losses.** A module of ``fn`` may leave a scalar ``loss`` Tensor beside its output (a
mixture of experts' aux and z losses, :mod:`minidist.moe`), which the caller adds to the
step's loss. The first forward keeps no graph, so that loss would reach the total without
its gradient. The checkpoint replaces it by a stand-in of the same value hanging on the
op's output (a consumer of it, so autograd runs it before the op's own backward): it only
records the gradient the loss receives. The recompute then starts backward from its output
*and* from the recomputed losses with those gradients (Megatron-LM's
``MoEAuxLossAutoScaler`` injects the aux loss into the backward of the layer's output the
same way), so each loss reaches the gradients once, with the value the step counted once;
the module's attributes (its statistics) are left as the forward left them.
"""
from __future__ import annotations

import contextlib

import numpy as np

from .autocast import autocast, autocast_dtype
from .device import current_device
from .memory import nbytes
from .nn import Dropout, Module
from .tensor import Tensor, as_tensor, is_grad_enabled, make_result, no_grad


def _dropout_rngs(fn) -> list:
    """The dropout streams ``fn`` may draw from: a Module's, or a bound method's module's."""
    owner = getattr(fn, "__self__", fn)
    return [m.rng for m in owner.modules() if isinstance(m, Dropout)] if isinstance(owner, Module) else []


def _side_loss_modules(fn) -> list:
    """The modules of ``fn`` that leave a ``loss`` attribute (a MoE layer's aux + z losses)."""
    owner = getattr(fn, "__self__", fn)
    return [m for m in owner.modules() if "loss" in vars(m)] if isinstance(owner, Module) else []


def _stand_in(loss: Tensor, anchor: Tensor, cell: list) -> Tensor:
    """``loss``'s value as a consumer of ``anchor`` whose backward only stores the gradient it got."""
    def backward(g, needs):
        cell.append(g)
        return [None]
    return make_result(loss.data, (anchor,), backward, "side_loss")


def _with_losses(x: Tensor, losses: list, grads: list) -> Tensor:
    """``x`` unchanged, its backward also starting each of ``losses`` with its gradient."""
    def backward(g, needs):
        return [g] + grads
    return make_result(x.data, (x, *losses), backward, "side_losses")


def _rng_state(rng):
    inner = rng
    while hasattr(inner, "rng"):                   # tensor- and context-parallel slicers wrap the DropoutRNG
        inner = inner.rng
    return inner, inner.key, inner._sequential.bit_generator.state


@contextlib.contextmanager
def _replay(states):
    """Dropout keys and streams as they were at the checkpointed forward; restored after."""
    now = [_rng_state(inner) for inner, _, _ in states]
    for inner, key, seq in states:
        inner.key, inner._sequential.bit_generator.state = key, seq
    try:
        yield
    finally:
        for inner, key, seq in now:
            inner.key, inner._sequential.bit_generator.state = key, seq


@contextlib.contextmanager
def recomputing(device):
    """Label the compute of a recomputed forward ``recompute <op>`` on ``device``."""
    if device is None:
        yield
        return
    prefix, device.label_prefix = device.label_prefix, "recompute "
    try:
        yield
    finally:
        device.label_prefix = prefix


class _Offloaded:
    """DeepSpeed's ``cpu_checkpointing``: the checkpoint lives in the host pool, copied there
    after the forward (device → host) and back before the recompute (host → device), each
    copy ``bytes / host_bandwidth`` on its own stream of the timeline."""

    def __init__(self, device, arrays, fmt):
        self.device, self.bytes = device, sum(nbytes(a, fmt if a.dtype.kind == "f" else None) for a in arrays)
        clock, bw = device.clock, device.spec.host_bandwidth
        # why (d2h): the device keeps nothing of this block until its backward
        clock.run("d2h", self.bytes / bw, "d2h checkpoint", "memcpy", start_after=clock.now("compute"),
                  args={"bytes": self.bytes})
        self.handle = device.host.alloc(self.bytes, "activations", "checkpoint")

    def fetch(self) -> None:
        clock, bw = self.device.clock, self.device.spec.host_bandwidth
        # why (h2d): the recompute needs the block's input back on the device
        _, done = clock.run("h2d", self.bytes / bw, "h2d checkpoint", "memcpy", start_after=clock.now("compute"),
                            args={"bytes": self.bytes})
        clock.wait("compute", done)
        self.device.host.free(self.handle)


class _Partitioned:
    """DeepSpeed's ``partition_activations``: a checkpoint every tensor-parallel rank holds
    whole is kept as 1/t of it per rank and gathered before the recompute. ``partition`` does
    the cutting and the gathering (:class:`minidist.parallel.tensor.CheckpointPartition`)."""

    def __init__(self, partition, x: np.ndarray, fmt):
        self.partition, self.shape, self.fmt = partition, x.shape, fmt
        self.chunk = partition.split(x)                           # what is saved

    def full(self) -> np.ndarray:
        return self.partition.gather(self.chunk, self.shape, self.fmt)


def checkpoint(fn, *inputs, cpu: bool = False, partition=None) -> Tensor:
    """``fn(*inputs)`` keeping only ``inputs`` for backward (``fn`` returns one Tensor). When
    ``fn`` is a Module its parameters are parents of the op, so that a split backward can
    defer their gradients; a plain function's parameters get their gradients in backward too.
    ``cpu``: keep the inputs in the host pool; ``partition``: shard the (replicated) inputs
    over the tensor-parallel ranks while they wait (see the classes above)."""
    inputs = tuple(as_tensor(x) for x in inputs)
    if not is_grad_enabled() or not any(x.requires_grad for x in inputs):
        return fn(*inputs)
    fmt, device = autocast_dtype(), current_device()
    states = [_rng_state(r) for r in _dropout_rngs(fn)]
    sided = _side_loss_modules(fn)
    before = [m.loss for m in sided]
    with no_grad():
        out = fn(*inputs)                                          # no graph: nothing saved
    # the side losses this forward left (a module it did not run keeps its old one)
    sided = [m for m, old in zip(sided, before) if m.loss is not old and isinstance(m.loss, Tensor)]
    params = tuple(p for p in fn.parameters() if p.requires_grad) if isinstance(fn, Module) else ()
    work = []                                                      # a deferred W pass, if any
    parts = [_Partitioned(partition, x.data, fmt) for x in inputs] if partition is not None else None
    kept = [p.chunk for p in parts] if parts else [x.data for x in inputs]
    offloaded = _Offloaded(device, kept, fmt) if cpu and device is not None else None

    def backward(g, needs):
        n_in = len(inputs)
        if not any(needs[:n_in]) and work:                         # the W pass of a split backward
            work.pop().run()
            return [None] * len(needs)
        if offloaded is not None:
            offloaded.fetch()
        values = [p.full() for p in parts] if parts else [x.data for x in inputs]
        detached = [Tensor(v, requires_grad=x.requires_grad) for v, x in zip(values, inputs)]
        # why: the forward's activations were not kept; run it again, as it ran, to get them back
        kept_state = [dict(vars(m)) for m in sided]
        with _replay(states), recomputing(device), autocast(fmt):
            again = fn(*detached)
        got = [(m.loss, cell[0]) for m, cell in zip(sided, cells) if cell]
        if got:                                                    # the side losses' gradients join here
            again = _with_losses(again, [loss for loss, _ in got], [grad for _, grad in got])
        for m, state in zip(sided, kept_state):                    # statistics as the forward left them
            vars(m).update(state)
        defer = bool(params) and not any(needs[n_in:])             # the params' gradients wait for W
        w = again.backward(g, defer_weight_grad=defer)
        if defer:
            work.append(w)
        return [d.grad if n else None for d, n in zip(detached, needs[:n_in])] + [None] * len(params)

    result = make_result(out.data, inputs + params, backward, "checkpoint", saved=[] if offloaded else kept)
    cells = [[] for _ in sided]                                    # the gradient each side loss receives
    for m, cell in zip(sided, cells):
        m.loss = _stand_in(m.loss, result, cell)
    return result
