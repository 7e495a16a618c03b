"""Tensor and reverse-mode autograd, vectorised (micrograd's idea over NumPy arrays).

A :class:`Tensor` wraps an ndarray. Every op (see :mod:`minidist.ops`) computes its
output eagerly and, when gradients are wanted, attaches a :class:`Node` holding the
op's parents and a ``backward(grad, needs)`` closure written right beside the forward.
``needs[i]`` says whether parent *i* wants a gradient (PyTorch's ``needs_input_grad``):
this is what lets :meth:`Tensor.backward` split an op's backward into the part that
produces input gradients (``B``) and the part that produces weight gradients (``W``),
which zero-bubble pipeline schedules run at different times (Qi et al. 2023).

Memory: arrays an op keeps for backward are charged to the current rank's device under
"activations" and released as soon as backward has consumed the node, so the activation
curve of a training step rises through forward and falls back to zero through backward.
"""
from __future__ import annotations

import contextvars
import heapq
import itertools

import numpy as np

from .device import current_device
from .memory import nbytes
from .autocast import output_dtype, round_output, rounding_backward

# Creation order of op outputs: backward runs newest first. One counter for the whole process,
# shared by the in-process ranks (threads) on purpose: next() on an itertools.count is one C
# call, atomic under the GIL, so no two outputs get the same number; a rank only compares the
# numbers of its own graph, built by its own thread in order, so other ranks' numbers in
# between change nothing.
_op_counter = itertools.count()
_grad_enabled: contextvars.ContextVar[bool] = contextvars.ContextVar("minidist_grad", default=True)


def is_grad_enabled() -> bool:
    return _grad_enabled.get()


class no_grad:
    """Context manager (and decorator) that disables graph recording, like ``torch.no_grad``."""

    def __enter__(self):
        self._token = _grad_enabled.set(False)

    def __exit__(self, *exc):
        _grad_enabled.reset(self._token)

    def __call__(self, fn):
        def wrapper(*a, **k):
            with no_grad():
                return fn(*a, **k)
        return wrapper


class Node:
    """The record one op leaves in the graph: parents, backward closure, saved bytes."""

    __slots__ = ("parents", "backward", "name", "device", "saved_keys")

    def __init__(self, parents, backward, name, device, saved_keys):
        self.parents = parents
        self.backward = backward
        self.name = name
        self.device = device
        self.saved_keys = saved_keys

    def release(self):
        """Drop what was saved for backward (and its activation bytes)."""
        if self.device is not None and self.saved_keys:
            self.device.release_saved(self.saved_keys)
        self.saved_keys = ()
        self.backward = None


# What a tensor's ``_ctx`` becomes once backward has run through its op and freed it: no
# parents (the graph above can go), no backward, so that a second backward through it raises
# (PyTorch's "Trying to backward through the graph a second time") instead of taking the tensor
# for a leaf and dropping the gradients silently
_RELEASED = Node((), None, "released", None, ())


class Tensor:
    """An ndarray with an optional gradient and a link to the op that produced it."""

    is_param = False
    __array_priority__ = 1000  # so ndarray OP Tensor dispatches to Tensor's reflected op

    def __init__(self, data, requires_grad: bool = False, name: str | None = None):
        if isinstance(data, Tensor):
            data = data.data
        arr = np.asarray(data)
        if arr.dtype.kind == "f" and arr.dtype not in (np.float32, np.float64):
            arr = arr.astype(np.float32)
        elif arr.dtype.kind in "iub" and requires_grad:
            raise TypeError("only floating-point tensors can require gradients")
        elif not isinstance(data, (np.ndarray, np.generic)) and arr.dtype == np.float64:
            arr = arr.astype(np.float32)  # Python floats/lists default to float32, like torch;
            # a NumPy scalar keeps its dtype (a 0-d op result is one: float64 stays float64)
        self.data = arr
        self._grad = None
        self.requires_grad = requires_grad
        self._ctx: Node | None = None
        self.name = name
        self._hooks = None

    # -- gradient storage -------------------------------------------------------------------
    @property
    def grad(self):
        return self._grad

    @grad.setter
    def grad(self, value):
        self._grad = value

    def register_post_accumulate_grad_hook(self, hook):
        """Call ``hook(tensor)`` each time backward has finished accumulating this leaf's grad
        (torch's hook of the same name; DDP launches bucket all-reduces from it)."""
        if self._hooks is None:
            self._hooks = []
        self._hooks.append(hook)
        return hook

    def _accumulate(self, g):
        if g.shape != self.data.shape:
            raise RuntimeError(f"gradient shape {g.shape} does not match tensor shape {self.data.shape}"
                               f"{' for ' + self.name if self.name else ''}")
        if self._grad is None:
            self.grad = np.array(g, dtype=self.data.dtype, copy=True)
        else:
            self._grad += g
        for hook in self._hooks or ():
            hook(self)

    # -- conveniences ---------------------------------------------------------------------
    shape = property(lambda self: self.data.shape)
    ndim = property(lambda self: self.data.ndim)
    dtype = property(lambda self: self.data.dtype)
    size = property(lambda self: self.data.size)

    def numpy(self):
        return self.data

    def __array__(self, dtype=None, copy=None):
        """``np.asarray(tensor)``: its values (torch refuses the same for a tensor that
        requires grad: convert ``tensor.detach()`` or ``tensor.data`` to say you mean it)."""
        if self.requires_grad:
            raise RuntimeError("can't convert a Tensor that requires grad to a NumPy array: use "
                               "tensor.detach() or tensor.data (the values, outside the graph)")
        return self.data if dtype is None else self.data.astype(dtype, copy=False)

    def item(self):
        return self.data.item()

    def detach(self) -> "Tensor":
        return Tensor(self.data)

    def __len__(self):
        return len(self.data)

    def __repr__(self):
        grad = ", requires_grad=True" if self.requires_grad else ""
        return f"Tensor({np.array2string(self.data, precision=4, threshold=8)}{grad})"

    # -- autograd ---------------------------------------------------------------------------
    def backward(self, grad=None, defer_weight_grad: bool = False, retain_graph: bool = False):
        """Reverse-mode autograd from this tensor.

        ``grad`` is the upstream gradient (required unless the tensor is a scalar): a
        pipeline stage starts backward from its output with the gradient received from the
        next stage. With ``defer_weight_grad=True`` only input gradients are computed now
        (the zero-bubble ``B`` pass); the returned :class:`WeightGradWork` computes the
        parameters' gradients when ``.run()`` is called (the ``W`` pass).
        """
        if grad is None:
            if self.data.size != 1:
                raise RuntimeError("grad can be implicitly created only for scalar outputs; "
                                   f"pass grad= with shape {self.data.shape}")
            grad = np.ones_like(self.data)
        grad = np.asarray(grad.data if isinstance(grad, Tensor) else grad, dtype=self.data.dtype)
        if grad.shape != self.data.shape:
            raise ValueError(f"backward: grad shape {grad.shape} != tensor shape {self.data.shape}")
        if not self.requires_grad:
            raise RuntimeError("tensor does not require grad and has no grad_fn")
        if self._ctx is None:                      # backward on a leaf: its gradient is grad
            self._accumulate(grad)
            return WeightGradWork([]) if defer_weight_grad else None
        # Like PyTorch's engine: count each tensor's consumers, then run nodes newest-first
        # (by creation order) as soon as all their consumers are done. A leaf's gradient is
        # accumulated the moment it is complete, so hooks (DDP buckets) fire mid-backward.
        pending = _count_consumers(self)
        grads = {id(self): grad}
        ready = [(-self._seq, self)]
        deferred = []
        while ready:
            _, t = heapq.heappop(ready)
            g = _dense(grads.pop(id(t)))
            node = t._ctx
            if node.backward is None:
                raise RuntimeError("trying to backward through the graph a second time; "
                                   "pass retain_graph=True the first time")
            needs = [isinstance(p, Tensor) and p.requires_grad for p in node.parents]
            later = [n and defer_weight_grad and p.is_param for n, p in zip(needs, node.parents)]
            now = [n and not w for n, w in zip(needs, later)]
            pgrads = node.backward(g, now) if any(now) else [None] * len(needs)
            for p, pg, n in zip(node.parents, pgrads, needs):
                if not n:
                    continue
                if pg is not None:
                    prev = grads.get(id(p))
                    grads[id(p)] = pg if prev is None else _add_grads(prev, pg)
                pending[id(p)] -= 1
                if pending[id(p)] == 0 and id(p) in grads:
                    if p._ctx is None:
                        p._accumulate(_dense(grads.pop(id(p))))
                    else:
                        heapq.heappush(ready, (-p._seq, p))
            if any(later):
                deferred.append((node, g, later))
            elif not retain_graph:
                node.release()
                t._ctx = _RELEASED
        return WeightGradWork(deferred) if defer_weight_grad else None

    # Operators (x + y, x @ w, x.sum(), x.T, …) are ops, so they live in minidist.ops, which
    # sits above this module; minidist/ops/methods.py attaches them to Tensor on import.


class Parameter(Tensor):
    """A trainable leaf tensor (``torch.nn.Parameter``). Created inside ``with device:``,
    its bytes are charged to that device's "parameters", and its gradient's to "gradients".
    ``dtype_tag`` names an emulated storage format ("fp16", "bf16"…) for the accounting."""

    is_param = True
    # How the parameter is split over ranks: attributes of the parameter, read by tensor
    # parallelism, checkpoints, clipping and ZeRO alike (Megatron-LM's
    # ``set_tensor_model_parallel_attributes``). Set by :class:`minidist.layers.Layers`.
    partition_dim = None        # the axis cut over the tensor-parallel ranks; None: replicated
    partition_stride = 1        # that axis is first cut into this many parts (c_attn's q | k | v: 3)
    partition_padded = False    # the axis is padded to a multiple of the ranks (the vocabulary)
    sequence_parallel = False   # replicated, but sees s/t positions: its gradient is summed over tp
    shared = False              # a second copy of a weight another rank counts (the tied LM head)
    expert = False              # one expert's weight (split over the expert-parallel ranks)
    adapter = False             # added by parameter-efficient fine-tuning (minidist.peft): LoRA's A, B, …

    @property
    def frozen(self) -> bool:
        """Not trained (a distillation teacher, a fine-tuned model's base): torch's requires_grad=False."""
        return not self.requires_grad

    def __init__(self, data, requires_grad: bool = True, name: str | None = None):
        super().__init__(data, requires_grad=requires_grad, name=name)
        self.dtype_tag = None
        self.device = None
        self._param_handle = None
        self._grad_handle = None
        dev = current_device()
        if dev is not None:
            self.place(dev)

    def place(self, device, category: str = "parameters"):
        """Charge this parameter's bytes to ``device`` (move it "onto the GPU")."""
        self.unplace()
        self.device = device
        self._param_handle = device.memory.alloc(nbytes(self.data, self.dtype_tag), category, self.name or "")
        device.param_arrays.add(id(self.data))
        if self._grad is not None:
            self._grad_handle = device.memory.alloc(nbytes(self._grad, self.dtype_tag), "gradients", self.name or "")

    def unplace(self):
        """Release this parameter's (and its gradient's) bytes from its device."""
        if self.device is not None:
            self.device.memory.free(self._param_handle)
            self.device.memory.free(self._grad_handle)
            self.device.param_arrays.discard(id(self.data))
        self.device = self._param_handle = self._grad_handle = None

    @property
    def grad(self):
        return self._grad

    @grad.setter
    def grad(self, value):
        if self.device is not None:
            self.device.memory.free(self._grad_handle)
            self._grad_handle = None
            if value is not None:
                self._grad_handle = self.device.memory.alloc(nbytes(value, self.dtype_tag), "gradients", self.name or "")
        self._grad = value


class WeightGradWork:
    """The deferred weight-gradient (``W``) pass of a ``backward(defer_weight_grad=True)``."""

    def __init__(self, deferred):
        self.deferred = deferred

    def run(self):
        sums: dict[int, tuple[Tensor, np.ndarray]] = {}
        for node, g, later in self.deferred:
            for p, pg in zip(node.parents, node.backward(g, later)):
                if pg is not None and p.is_param:
                    prev = sums.get(id(p))
                    sums[id(p)] = (p, pg if prev is None else _add_grads(prev[1], pg))
            node.release()
        for p, g in sums.values():
            p._accumulate(_dense(g))
        self.deferred = []


class SliceGrad:
    """The gradient of slices of one tensor, kept as ``(index, values)`` parts: zero outside
    them. A slice's backward (``split``'s chunks: q, k, v of one projection) returns one; the
    engine joins the parts of one tensor and writes them into a single zero-filled buffer
    (:func:`_dense`) when the tensor's gradient is complete, where adding full-size arrays,
    each zero outside its chunk, would cost a pass over the whole tensor per chunk. The sums
    are the same: each element of the buffer is its parts added in the same order."""

    __slots__ = ("shape", "dtype", "parts")

    def __init__(self, shape, dtype, index, values):
        self.shape, self.dtype, self.parts = shape, dtype, [(index, values)]


def _add_grads(a, b):
    """``a + b`` for two contributions to one tensor's gradient (arrays or SliceGrads)."""
    if isinstance(a, SliceGrad) and isinstance(b, SliceGrad):
        a.parts.extend(b.parts)                # a is the engine's own, made by a slice's backward
        return a
    return _dense(a) + _dense(b)


def _dense(g):
    """A gradient as an array: a SliceGrad's parts written into zeros (one part: assigned, as
    ``zeros[index] = values`` did; several: each added, as the sum of such arrays did)."""
    if not isinstance(g, SliceGrad):
        return g
    out = np.zeros(g.shape, dtype=g.dtype)
    if len(g.parts) == 1:
        index, values = g.parts[0]
        out[index] = values
    else:
        for index, values in g.parts:
            out[index] += values.astype(g.dtype, copy=False)     # each part rounded to the dtype first
    return out


def _count_consumers(root: Tensor) -> dict[int, int]:
    """For every tensor reachable from ``root``: how many graph edges consume it."""
    pending: dict[int, int] = {}
    stack, seen = [root], {id(root)}
    while stack:
        t = stack.pop()
        if t._ctx is None:
            continue
        for p in t._ctx.parents:
            if isinstance(p, Tensor) and p.requires_grad:
                pending[id(p)] = pending.get(id(p), 0) + 1
                if id(p) not in seen:
                    seen.add(id(p))
                    stack.append(p)
    return pending


def as_tensor(x) -> Tensor:
    return x if isinstance(x, Tensor) else Tensor(x)


def make_result(data, parents, backward, name, saved=(), flops=0, matmul=False) -> Tensor:
    """Wrap an op's output; charge its FLOPs and, if recording, its saved arrays.

    ``saved`` lists the arrays the backward closure keeps alive. Parameters (leaves) are
    not activations and are skipped by passing only intermediate arrays here. Under
    :class:`minidist.autocast` the output (and the gradient coming back into this
    op) is rounded to the low-precision format and saved arrays are charged at its size.
    """
    dev = current_device()
    if dev is not None and flops:
        dev.compute(name, int(flops), matmul)
    lowp = output_dtype(name, data)   # under autocast: "fp16"/"bf16"…, else None
    if lowp is not None:              # the output is a low-precision tensor, so is its gradient
        data = round_output(data, lowp)
        backward = rounding_backward(backward, lowp)
    out = Tensor(data)
    if _grad_enabled.get() and any(isinstance(p, Tensor) and p.requires_grad for p in parents):
        out.requires_grad = True
        out._seq = next(_op_counter)
        keys = dev.save_for_backward(saved, lowp) if dev is not None and saved else ()
        out._ctx = Node(tuple(parents), backward, name, dev, keys)
    return out

