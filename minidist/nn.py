"""Modules: parameter containers with torch.nn's interface (Module, Linear, LayerNorm, …)."""
from __future__ import annotations

import difflib
from collections import OrderedDict

import numpy as np

from . import functional as F
from .tensor import Parameter, Tensor


class Module:
    """Base class: attributes that are Parameters or Modules are registered by name."""

    def __init__(self):
        object.__setattr__(self, "_parameters", OrderedDict())
        object.__setattr__(self, "_modules", OrderedDict())
        object.__setattr__(self, "training", True)

    def __setattr__(self, name, value):
        if isinstance(value, Parameter):
            self._parameters[name] = value
        elif isinstance(value, Module):
            self._modules[name] = value
        object.__setattr__(self, name, value)

    def named_parameters(self, prefix: str = ""):
        """(name, parameter) pairs, each shared parameter once (first name wins, as torch)."""
        seen = set()
        for name, p in self._named_parameters_all(prefix):
            if id(p) not in seen:
                seen.add(id(p))
                yield name, p

    def _named_parameters_all(self, prefix):
        for name, p in self._parameters.items():
            yield prefix + name, p
        for name, m in self._modules.items():
            yield from m._named_parameters_all(f"{prefix}{name}.")

    def parameters(self):
        return [p for _, p in self.named_parameters()]

    def modules(self):
        yield self
        for m in self._modules.values():
            yield from m.modules()

    def num_parameters(self) -> int:
        return sum(p.size for p in self.parameters())

    def state_dict(self) -> "OrderedDict[str, np.ndarray]":
        """Every parameter by its full name (tied ones under each name), as copies."""
        return OrderedDict((n, p.data.copy()) for n, p in self._named_parameters_all(""))

    def load_state_dict(self, state: dict, strict: bool = True) -> tuple[list, list]:
        """Copy ``state`` (name → array) into the parameters in place, cast to their dtype.

        Everything is checked before anything is copied, so a bad state dict leaves the model
        as it was. ``strict`` (torch's default): every parameter must be present and nothing
        else. Returns ``(missing_keys, unexpected_keys)``, as torch does.
        """
        own = dict(self._named_parameters_all(""))
        missing = [n for n in own if n not in state]
        unexpected = [n for n in state if n not in own]
        if strict and (missing or unexpected):
            hints = [f"{u!r} → {close[0]!r}?" for u in unexpected
                     for close in [difflib.get_close_matches(u, missing, n=1)] if close]
            raise KeyError(f"load_state_dict: missing key(s) {missing} (parameters of this model the state "
                           f"dict lacks); unexpected key(s) {unexpected} (not parameters of this model)"
                           + (f"; renamed? {', '.join(hints)}" if hints else "")
                           + "; pass strict=False to load the keys that match")
        for name in state:
            if name in own and own[name].shape != np.shape(state[name]):
                raise ValueError(f"load_state_dict: {name!r} has shape {own[name].shape} in this model but "
                                 f"{np.shape(state[name])} in the state dict (saved from another model config?)")
        for name in own:
            if name in state:
                own[name].data[...] = state[name]
        return missing, unexpected

    def set_dropout_key(self, step: int, micro: int, row_offset: int = 0) -> None:
        """Draw the next forward's dropout masks for (step, micro-step), this rank's slice
        starting at row ``row_offset`` of the global batch (see :class:`DropoutRNG`)."""
        for m in self.modules():
            if isinstance(m, Dropout):
                m.rng.key = (int(step), int(micro), int(row_offset))

    def zero_grad(self, set_to_none: bool = True) -> None:
        for p in self.parameters():
            if set_to_none:
                p.grad = None
            elif p.grad is not None:
                p.grad[...] = 0

    def train(self, mode: bool = True) -> "Module":
        for m in self.modules():
            object.__setattr__(m, "training", mode)
        return self

    def eval(self) -> "Module":
        return self.train(False)

    # -- forward hooks (torch.nn.Module's; ZeRO-3 gathers a layer's parameters in them) ----
    def register_forward_pre_hook(self, hook):
        """``hook(module, args)`` runs before ``forward``; it may return new args (a tuple)."""
        return _HookHandle(self.__dict__.setdefault("_forward_pre_hooks", []), hook)

    def register_forward_hook(self, hook):
        """``hook(module, args, output)`` runs after ``forward``; it may return a new output."""
        return _HookHandle(self.__dict__.setdefault("_forward_hooks", []), hook)

    def __call__(self, *args, **kwargs):
        for hook in list(self.__dict__.get("_forward_pre_hooks", ())):
            new = hook(self, args)
            if new is not None:
                args = new if isinstance(new, tuple) else (new,)
        out = self.forward(*args, **kwargs)
        for hook in list(self.__dict__.get("_forward_hooks", ())):
            new = hook(self, args, out)
            if new is not None:
                out = new
        return out


class _HookHandle:
    """What ``register_forward_*hook`` returns: ``handle.remove()`` unregisters the hook."""

    def __init__(self, hooks: list, hook):
        self.hooks, self.hook = hooks, hook
        hooks.append(hook)

    def remove(self) -> None:
        if self.hook in self.hooks:
            self.hooks.remove(self.hook)


class ModuleList(Module):
    """Modules named 0, 1, 2, … — or by ``names`` (a pipeline stage's blocks keep their
    index in the whole model: ``transformer.h.4`` on the rank that holds layers 4 and 5)."""

    def __init__(self, modules, names=None):
        super().__init__()
        modules = list(modules)
        for i, m in zip(range(len(modules)) if names is None else names, modules):
            setattr(self, str(i), m)

    def __iter__(self):
        return iter(self._modules.values())

    def __len__(self):
        return len(self._modules)

    def __getitem__(self, i):
        """The module named ``i`` (its position, unless the list was built with names)."""
        return self._modules[str(i)]


def _with_arrays(cls, params: dict, **attrs) -> Module:
    """A ``cls`` holding the given arrays as its parameters (None: no such parameter), with
    no random draw; charged to the current device like any Parameter."""
    m = cls.__new__(cls)
    Module.__init__(m)
    for name, value in attrs.items():
        object.__setattr__(m, name, value)
    for name, a in params.items():
        setattr(m, name, Parameter(a) if a is not None else None)
    return m


def _rng(rng):
    return rng if rng is not None else np.random.default_rng(0)


class Linear(Module):
    """y = x @ W + b with W stored (in_features, out_features), initialised N(0, std²)."""

    def __init__(self, in_features, out_features, bias=True, rng=None, std=0.02, dtype=np.float32):
        super().__init__()
        self.weight = Parameter(_rng(rng).normal(0.0, std, (in_features, out_features)).astype(dtype))
        self.bias = Parameter(np.zeros(out_features, dtype=dtype)) if bias else None

    @classmethod
    def from_arrays(cls, weight, bias=None) -> "Linear":
        """The layer holding ``weight`` (in, out) and ``bias`` (out,) or None."""
        return _with_arrays(cls, {"weight": weight, "bias": bias})

    def forward(self, x):
        return F.linear(x, self.weight, self.bias)


class LayerNorm(Module):
    def __init__(self, n, bias=True, eps=1e-5, dtype=np.float32):
        super().__init__()
        self.eps = eps
        self.weight = Parameter(np.ones(n, dtype=dtype))
        self.bias = Parameter(np.zeros(n, dtype=dtype)) if bias else None

    @classmethod
    def from_arrays(cls, weight, bias=None, eps=1e-5) -> "LayerNorm":
        return _with_arrays(cls, {"weight": weight, "bias": bias}, eps=eps)

    def forward(self, x):
        return F.layer_norm(x, self.weight, self.bias, self.eps)


class Embedding(Module):
    def __init__(self, num_embeddings, embedding_dim, rng=None, std=0.02, dtype=np.float32):
        super().__init__()
        self.weight = Parameter(_rng(rng).normal(0.0, std, (num_embeddings, embedding_dim)).astype(dtype))

    @classmethod
    def from_arrays(cls, weight) -> "Embedding":
        return _with_arrays(cls, {"weight": weight})

    def forward(self, idx):
        return F.embedding(idx, self.weight)


class DropoutRNG:
    """The random numbers behind one dropout layer's masks: a stream per row of the batch.

    Row ``i`` (axis 0) of the uniform draws is ``default_rng((site, step, micro, row_offset + i))``;
    ``site`` names the layer, ``(step, micro, row_offset)`` is the key the trainer sets
    before each forward (:meth:`Module.set_dropout_key`; ``row_offset`` = where this rank's
    slice starts in the global batch). So rows lo..hi of the mask for the whole global
    batch are the mask for the slice lo..hi: data-parallel ranks drop exactly what one
    rank drops, and a forward run again with the same key redraws the same masks.
    Until a key is set (a model used outside the trainer) it is a sequential generator
    seeded with ``site``. ``random(shape)`` is the one ``np.random.Generator`` method
    dropout calls.
    """

    def __init__(self, site: int):
        self.site = site
        self.key: tuple[int, int, int] | None = None     # (step, micro, row_offset)
        self._sequential = np.random.default_rng(site)

    def random(self, shape) -> np.ndarray:
        if self.key is None:
            return self._sequential.random(shape)
        step, micro, first = self.key
        return np.stack([np.random.default_rng((self.site, step, micro, first + i)).random(shape[1:])
                         for i in range(shape[0])])       # (rows, ...) one stream per row


class Dropout(Module):
    """Dropout whose masks come from a :class:`DropoutRNG` (seeded, keyed per step by the trainer);
    ``p`` 0.5 by default, as ``torch.nn.Dropout``."""

    def __init__(self, p=0.5, seed=0):
        super().__init__()
        self.p = p
        self.rng = DropoutRNG(seed)

    def forward(self, x: Tensor) -> Tensor:
        return F.dropout(x, self.p, self.training, self.rng)
