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
import functools

import numpy as np

from .autocast import autocast, autocast_dtype
from .device import current_device
from .memory import nbytes
from .nn import Dropout, Module
from .tensor import Tensor, as_tensor, is_grad_enabled, make_result, no_grad


def _reachable(fn, depth: int = 2) -> list:
    """What ``fn`` may run or draw from: itself when it is a Module, a bound method's object, a
    ``functools.partial``'s function and arguments, a function's closure and default values
    (nested functions ``depth`` levels down). A lambda that calls a Dropout module it closes
    over draws from that module's stream, which the recompute must replay."""
    if depth < 0:
        return []
    if isinstance(fn, (Module, np.random.Generator)):
        return [fn]
    found = []
    if isinstance(getattr(fn, "__self__", None), Module):
        found.append(fn.__self__)
    if isinstance(fn, functools.partial):
        for x in (fn.func, *fn.args, *fn.keywords.values()):
            found += _reachable(x, depth - 1)
    cells = [c.cell_contents for c in (getattr(fn, "__closure__", None) or ()) if _filled(c)]
    for x in cells + list(getattr(fn, "__defaults__", None) or ()):
        if isinstance(x, (Module, np.random.Generator)):
            found.append(x)
        elif callable(x) or isinstance(x, functools.partial):
            found += _reachable(x, depth - 1)
    return found


def _filled(cell) -> bool:
    """Whether a closure cell holds a value (reading an empty one raises ValueError)."""
    try:
        _ = cell.cell_contents
    except ValueError:                               # a closure variable not assigned yet
        return False
    return True


def _modules(fn) -> list:
    """The Modules ``fn`` reaches (:func:`_reachable`), each with its submodules, once."""
    seen, out = set(), []
    for owner in _reachable(fn):
        if isinstance(owner, Module):
            for m in owner.modules():
                if id(m) not in seen:
                    seen.add(id(m))
                    out.append(m)
    return out


def _dropout_rngs(fn) -> list:
    """The dropout streams ``fn`` may draw from: its Dropout modules' (:func:`_modules`)."""
    return [m.rng for m in _modules(fn) if isinstance(m, Dropout)]


def _generators(fn) -> list:
    """NumPy Generators ``fn`` closes over or is given (``F.dropout(x, p, rng=g)`` in a lambda)."""
    return list({id(g): g for g in _reachable(fn) if isinstance(g, np.random.Generator)}.values())


def _side_loss_modules(fn) -> list:
    """The modules of ``fn`` that leave a ``loss`` attribute (a MoE layer's aux + z losses)."""
    return [m for m in _modules(fn) if "loss" in vars(m)]


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
def _replay(states, generators=()):
    """Dropout keys and streams, and the Generators' states (``(generator, state)``), as they
    were at the checkpointed forward; restored after."""
    now = [_rng_state(inner) for inner, _, _ in states]
    later = [(g, g.bit_generator.state) for g, _ in generators]
    for inner, key, seq in states:
        inner.key, inner._sequential.bit_generator.state = key, seq
    for g, state in generators:
        g.bit_generator.state = state
    try:
        yield
    finally:
        for inner, key, seq in now:
            inner.key, inner._sequential.bit_generator.state = key, seq
        for g, state in later:
            g.bit_generator.state = state


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


def is_recomputing(device) -> bool:
    """Whether ``device`` is running a recomputed forward (inside :func:`recomputing`): a
    backward, whatever the forward hooks see (ZeRO-3 prefetches no forward order then)."""
    return device is not None and device.label_prefix == "recompute "


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
    """``fn(*inputs)`` keeping only ``inputs`` for backward (``fn`` returns one Tensor; arguments
    that are no arrays, an axis or a flag, are passed through as given). The dropout streams it
    draws from are replayed in the recompute: its Dropout modules' when ``fn`` is a Module, a
    bound method, a ``functools.partial`` or a function closing over them, and the NumPy
    Generators it closes over (:func:`_reachable`). When
    ``fn`` is a Module its parameters are parents of the op, so that a split backward can
    defer their gradients; a plain function's parameters get their gradients in backward too.
    ``cpu``: keep the inputs in the host pool; ``partition``: shard the (replicated) inputs
    over the tensor-parallel ranks while they wait (see the classes above)."""
    # the arrays are the op's inputs; other arguments (an axis, a flag, None) are passed as given,
    # as torch.utils.checkpoint does
    args = list(inputs)
    where = [i for i, x in enumerate(args) if isinstance(x, (Tensor, np.ndarray))]
    inputs = tuple(as_tensor(args[i]) for i in where)
    user_fn = fn

    def fn(*tensors):
        call = list(args)
        for i, t in zip(where, tensors):
            call[i] = t
        out = user_fn(*call)
        if not isinstance(out, Tensor):
            raise TypeError(f"checkpoint(fn, ...): fn must return one Tensor, got {type(out).__name__}; "
                            f"checkpoint a function that returns the tensor to keep, and compute the rest outside")
        return out

    trainable = isinstance(user_fn, Module) and any(p.requires_grad for p in user_fn.parameters())
    # nothing to differentiate: a plain run. A Module with trainable parameters is checkpointed even
    # when no input needs a gradient (fine-tuning's first block behind the frozen embeddings; torch's
    # reentrant checkpoint keeps nothing there, Hugging Face's PEFT calls enable_input_require_grads)
    if not is_grad_enabled() or not (trainable or any(x.requires_grad for x in inputs)):
        return user_fn(*[inputs[where.index(i)] if i in where else x for i, x in enumerate(args)])
    fmt, device = autocast_dtype(), current_device()
    states = [_rng_state(r) for r in _dropout_rngs(user_fn)]
    generators = [(g, g.bit_generator.state) for g in _generators(user_fn)]
    sided = _side_loss_modules(user_fn)
    before = [m.loss for m in sided]
    with no_grad():
        out = fn(*inputs)                                          # no graph: nothing saved
    # the side losses this forward left (a module it did not run keeps its old one)
    sided = [m for m, old in zip(sided, before) if m.loss is not old and isinstance(m.loss, Tensor)]
    params = tuple(p for p in user_fn.parameters() if p.requires_grad) if isinstance(user_fn, Module) else ()
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
        with _replay(states, generators), recomputing(device), autocast(fmt):
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


def rerun_blocks(model) -> list:
    """The ids of the blocks whose forward full recomputation runs again in backward: those of
    the checkpointed units (:meth:`minidist.model.Recompute.units`) with something to
    differentiate, an input that needs a gradient or a trainable parameter of their own.
    :func:`checkpoint` runs a unit plainly, keeping its activations, when neither holds: under
    fine-tuning (:mod:`minidist.peft`) a unit of frozen blocks behind the frozen embeddings. A
    pipeline stage without the embeddings receives an input that needs a gradient."""
    rc = getattr(model, "recompute", None)
    ids = getattr(model, "layer_ids", None)
    if rc is None or ids is None:
        return []
    named = list(model.named_parameters())
    embeds = [p for n, p in named if n.startswith(("transformer.wte.", "transformer.wpe."))]
    grad = not getattr(model, "pre_process", True) or any(p.requires_grad for p in embeds)
    out = []
    for unit, saved in rc.units(list(ids)):
        trainable = any(p.requires_grad for i in unit for p in model.transformer.h[i].parameters())
        if saved and (grad or trainable):
            out += unit
        grad = grad or trainable
    return out
