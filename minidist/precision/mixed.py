"""Mixed-precision training: fp16/bf16 weights and gradients, fp32 master weights, loss scaling.

The recipe of Micikevicius et al., "Mixed Precision Training" (ICLR 2018), as DeepSpeed's
``FP16_Optimizer`` runs it (``deepspeed/runtime/fp16/fused_optimizer.py``):

1. The model's parameters are held in the low-precision format (2 bytes each) and so are
   their gradients (2 bytes). Forward and backward run under :class:`autocast`.
2. An **fp32 master copy** of every parameter (4 bytes) is what the optimizer updates: a
   tiny update ``lr·Δ`` added to an fp16 weight is often rounded away entirely (fp16 has
   11 significant bits: 1 + 2^-12 == 1), but it accumulates in fp32.
3. Adam's two moments are fp32 too (8 bytes). Per parameter: 2 + 2 + (4 + 8) = 16 bytes,
   the "K = 12" of the ZeRO paper (Rajbhandari et al. 2020, §3.1).
4. **Loss scaling** (fp16 only): backward starts from ``loss · S`` so that small gradients
   land inside fp16's range; the step divides by ``S`` again in fp32. If any gradient is
   inf/NaN, the step is skipped on *every* rank and the scaler backs off.

bf16 has fp32's exponent range, so it needs no loss scaling (``StaticLossScaler(1)``); the
overflow check still runs and still skips a step whose gradients are not finite.

One step, as :meth:`MixedPrecision.step` does it::

    grads --round to fp16--> overflow? --all-reduce MAX over ranks--> any rank overflowed?
        yes: skip, params / masters / optimizer states untouched, scale backed off
        no:  g32 = grad / S (fp32) -> optional clipping -> optimizer.update(master, g32)
             -> param = round(master) -> scale maybe grown after a clean window
"""
from __future__ import annotations

import dataclasses
from typing import NamedTuple

import numpy as np

from .. import distributed as dist
from ..memory import nbytes
from ..autocast import autocast
from ..numerics.formats import get_format
from .loss_scaler import StaticLossScaler, from_config, has_overflow
from ..numerics.quantize import quantize


class MixedPrecisionStep(NamedTuple):
    """One call of :meth:`MixedPrecision.step`: the scale it used and what happened."""

    step: int
    scale: float
    overflow: bool          # some rank saw an inf/NaN gradient
    skipped: bool           # so no rank updated anything


@dataclasses.dataclass
class FP32Master:
    """The fp32 master copy of one parameter. The optimizer keys its state on this object
    (``shape``, ``dtype``, ``name``, ``device`` are what :meth:`Optimizer.state_for` reads)."""

    data: np.ndarray
    name: str
    device: object = None

    shape = property(lambda self: self.data.shape)
    dtype = property(lambda self: self.data.dtype)


class Precision:
    """The mixed-precision policy of one rank: the format, the loss scaler, the step history.

    :class:`MixedPrecision` applies it to whole tensors; the ZeRO strategies of
    :mod:`minidist.parallel` apply the same pieces to the flat shard a rank owns. One
    optimizer step uses them in this order::

        round_(grads) -> found_overflow(grads, comm) -> [skip] or unscale_(grads) + update
        -> end_step(overflow)

    ``dtype``: "fp16" or "bf16" (fp8 formats work too, for experiments). ``scaler``: a
    Static/DynamicLossScaler; default: DeepSpeed's dynamic one for fp16, none (scale 1)
    otherwise.
    """

    def __init__(self, dtype: str = "fp16", scaler=None):
        self.dtype = get_format(dtype).name
        if scaler is None:
            scaler = from_config({"enabled": True}) if self.dtype == "fp16" else StaticLossScaler(1.0)
        self.scaler = scaler
        self.history: list[MixedPrecisionStep] = []

    @property
    def loss_scale(self) -> float:
        return self.scaler.loss_scale

    def cast_model(self, params) -> dict:
        """Make the model low precision; return ``{id(param): fp32 copy}`` taken *before*
        rounding — the initial values of the fp32 masters, whoever keeps them (all of them
        here, a 1/N shard under ZeRO). Parameters on a device are re-charged at 2 bytes."""
        fp32 = {}
        for p in params:
            fp32[id(p)] = np.array(p.data, dtype=np.float32, copy=True)
            p.data[...] = quantize(p.data, self.dtype)
            p.dtype_tag = self.dtype
            if p.device is not None:
                p.place(p.device)                   # re-charge params (and any grad) at 2 B
        return fp32

    def scale_loss(self, loss):
        """``loss · S``: backward from this makes every gradient S times larger. Computed
        outside autocast: the scaled loss is an fp32 scalar (it may exceed fp16's max)."""
        with autocast(None):
            return loss * self.loss_scale

    def round_(self, arrays) -> None:
        """Hold gradients in the low-precision format, in place (where fp16 underflow and
        overflow happen). Sums over micro-batches or ranks made in fp32 are rounded here."""
        for a in arrays:
            if a is not None:
                a[...] = quantize(a, self.dtype)

    def found_overflow(self, arrays, comm=None) -> bool:
        """Whether any of ``arrays`` — on *any* rank of ``comm`` — holds an inf/NaN. Every rank
        must skip the same steps, or their parameters would drift apart: the local flag is
        all-reduced with MAX (one element, as DeepSpeed all-reduces its overflow flag)."""
        local = has_overflow(list(arrays))
        if comm is None or comm.size == 1:
            return local
        # why: each rank sees only its own gradients (or its shard); all must agree to skip
        flag = dist.all_reduce(comm, np.array([float(local)]), op="max", algorithm="ring")
        return bool(flag[0] > 0)

    def unscale_(self, arrays) -> None:
        """Divide fp32 gradients by the loss scale, in place."""
        inv = np.float32(1.0 / self.loss_scale)
        for a in arrays:
            if a is not None:
                a *= inv

    def end_step(self, overflow: bool) -> MixedPrecisionStep:
        """Record the step and let the scaler back off or grow (DeepSpeed's rules)."""
        rec = MixedPrecisionStep(len(self.history), self.loss_scale, bool(overflow), bool(overflow))
        self.history.append(rec)
        self.scaler.update_scale(bool(overflow))
        return rec


def squared_norm(grads) -> float:
    """Σ g² over ``grads`` in float64. DDP sums tensor by tensor, ZeRO shard by shard and then
    over ranks: in float32 the two orders differ by ulps, and so would the clip coefficient.
    A float32 square is exact in float64 and the float64 sum's error (~1e-16) is far below
    float32's ulp, so the coefficient rounded to float32 is the same in any order."""
    return sum(float(np.dot(a, a)) for a in (g.reshape(-1).astype(np.float64) for g in grads if g is not None))


def clip_by_norm_(grads, norm: float, max_norm: float) -> None:
    """Scale ``grads`` in place by ``max_norm / (norm + 1e-6)`` if ``norm > max_norm``
    (``torch.nn.utils.clip_grad_norm_``'s rule); the coefficient in each array's dtype."""
    if norm > max_norm:
        coef = max_norm / (norm + 1e-6)
        for g in grads:
            if g is not None:
                g *= g.dtype.type(coef)


def global_norm_clip_(grads, max_norm: float) -> None:
    """Scale ``grads`` in place so that their global L2 norm is at most ``max_norm`` (> 0)."""
    clip_by_norm_(grads, float(np.sqrt(squared_norm(grads))), max_norm)


class MixedPrecision:
    """fp32 master weights + low-precision model + loss scaling around an existing optimizer.

    ``model``: a Module (or an iterable of Parameters) — its parameters must be the
    optimizer's. ``optimizer``: any :mod:`minidist.optim` optimizer; its ``update`` is
    applied to the fp32 masters, its ``step`` is not used. ``dtype``: "fp16" or "bf16" (fp8
    formats work too, for experiments), or a :class:`Precision` to share. ``scaler``: a
    Static/DynamicLossScaler; default: DeepSpeed's dynamic one for fp16, none (scale 1)
    otherwise. ``comm``: the communicator over which the overflow decision is agreed (None
    when every rank already holds the same, all-reduced gradients, as under DDP).
    ``gradient_clipping``: clip the *unscaled* gradients' global norm to this (0 = off), as
    DeepSpeed does. ``clip_``: how (a callable on the list of unscaled gradients, in place);
    default: their norm on this rank alone. A strategy passes its own when the norm must be
    summed over the ranks that hold other parts of the model (tensor/pipeline parallelism).

    Use::

        mp = MixedPrecision(model, opt, "fp16")
        with autocast(mp.dtype):
            _, loss = model(x, y)
        mp.scale_loss(loss).backward()
        mp.step()            # instead of opt.step()
        opt.zero_grad()
    """

    def __init__(self, model, optimizer, dtype="fp16", scaler=None, comm=None,
                 gradient_clipping: float = 0.0, clip_=None):
        self.precision = dtype if isinstance(dtype, Precision) else Precision(dtype, scaler)
        self.dtype = self.precision.dtype
        self.optimizer = optimizer
        self.comm = comm
        self.gradient_clipping = float(gradient_clipping)
        self.clip_ = clip_ or (lambda grads: global_norm_clip_(grads, self.gradient_clipping))
        params = [p for p in (model.parameters() if hasattr(model, "parameters") else model) if p.requires_grad]
        owned = {id(p) for g in optimizer.param_groups for p in g["params"]}
        if {id(p) for p in params} != owned:
            raise ValueError("MixedPrecision: the model's parameters and the optimizer's differ")
        in_groups = [p for g in optimizer.param_groups for p in g["params"]]
        fp32 = self.precision.cast_model(in_groups)     # 1. model rounded; fp32 copies taken first
        self.groups: list[tuple[dict, list]] = []      # (param group, [(param, master)])
        for group in optimizer.param_groups:
            pairs = []
            for p in group["params"]:
                # 2. the fp32 master, charged with the optimizer states (the "K" of ZeRO)
                master = FP32Master(fp32.pop(id(p)), p.name or "", p.device)
                if p.device is not None:
                    p.device.memory.alloc(nbytes(master.data), "optimizer_states", f"{master.name}.master")
                optimizer.state_for(master)             # 3. Adam's m and v, fp32, allocated now
                pairs.append((p, master))
            self.groups.append((group, pairs))
        self.last_underflow = None

    # -- the pieces ----------------------------------------------------------------------
    scaler = property(lambda self: self.precision.scaler)
    history = property(lambda self: self.precision.history)

    @property
    def loss_scale(self) -> float:
        return self.precision.loss_scale

    def autocast(self) -> autocast:
        """The autocast context for this run's forward pass."""
        return autocast(self.dtype)

    def scale_loss(self, loss):
        return self.precision.scale_loss(loss)

    def params(self):
        return [p for _, pairs in self.groups for p, _ in pairs]

    def masters(self):
        return [m for _, pairs in self.groups for _, m in pairs]

    def round_gradients(self) -> None:
        """Hold every gradient in the low-precision format (see :meth:`Precision.round_`)."""
        self.precision.round_([p.grad for p in self.params()])

    def found_overflow(self) -> bool:
        """Whether *any* rank has an inf/NaN gradient (see :meth:`Precision.found_overflow`)."""
        return self.precision.found_overflow([p.grad for p in self.params()], self.comm)

    def _unscaled_grads(self) -> list:
        """fp32 gradients divided by the loss scale, clipped if asked (global norm)."""
        grads = [None if p.grad is None else p.grad.astype(np.float32) for p in self.params()]
        self.precision.unscale_(grads)
        if self.gradient_clipping > 0:
            self.clip_(grads)
        return grads

    # -- the step ------------------------------------------------------------------------
    def step(self, overflow: bool | None = None) -> bool:
        """Round grads, agree on overflow, then skip or update masters and copy back.

        ``overflow``: the decision when the caller already agreed on it (the parameter
        server decides before its reduce). Returns True if the optimizer step was taken,
        False if it was skipped.
        """
        self.round_gradients()
        if overflow is None:
            overflow = self.found_overflow()
        if not overflow:
            grads = iter(self._unscaled_grads())
            for group, pairs in self.groups:
                for p, master in pairs:
                    g = next(grads)
                    if g is None:
                        continue
                    self.optimizer.update_for(p, master.data, g, self.optimizer.state_for(master), group)
                    p.data[...] = quantize(master.data, self.dtype)   # fp16 copy for the next forward
        self.precision.end_step(overflow)       # DeepSpeed's backoff / hysteresis / growth
        return not overflow

    def zero_grad(self) -> None:
        for p in self.params():
            p.grad = None

    def state_bytes(self) -> dict:
        """Emulated bytes of the model states: {"parameters", "gradients", "master", "optimizer"}."""
        low = sum(nbytes(p.data, self.dtype) for p in self.params())
        return {"parameters": low, "gradients": low,
                "master": sum(nbytes(m.data) for m in self.masters()),
                "optimizer": sum(nbytes(a) for m in self.masters()
                                 for a in self.optimizer.state_for(m).values() if isinstance(a, np.ndarray))}


def precision_from_config(cfg: dict):
    """The :class:`Precision` a DeepSpeed-style config asks for, or None for fp32 training.

    ``fp16.enabled`` → fp16 with the scaler of the ``fp16`` section (dynamic unless
    ``loss_scale > 0``); ``bf16.enabled`` → bf16 without loss scaling. Both on is an error.
    """
    fp16 = dict(cfg.get("fp16") or {})
    bf16 = dict(cfg.get("bf16") or {})
    if fp16.get("enabled") and bf16.get("enabled"):
        raise ValueError("fp16.enabled and bf16.enabled are both true; choose one")
    if fp16.get("enabled"):
        return Precision("fp16", from_config(fp16))
    if bf16.get("enabled"):
        return Precision("bf16", StaticLossScaler(1.0))
    return None


def from_training_config(cfg: dict, model, optimizer, comm=None):
    """The MixedPrecision a DeepSpeed-style config asks for (see :func:`precision_from_config`),
    or None for fp32 training."""
    precision = precision_from_config(cfg)
    if precision is None:
        return None
    clip = float(cfg.get("gradient_clipping", 0.0) or 0.0)
    return MixedPrecision(model, optimizer, precision, comm=comm, gradient_clipping=clip)
