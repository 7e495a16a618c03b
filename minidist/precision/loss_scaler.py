"""Loss scaling for fp16 training: static and dynamic, with DeepSpeed's rules and keys.

fp16's smallest subnormal is 2^-24 ≈ 6e-8, and many gradients of a real network are
smaller than that: cast to fp16 they underflow to zero. Loss scaling (Micikevicius et al.,
"Mixed Precision Training", ICLR 2018, §3.2) multiplies the loss by ``S`` before backward,
so every gradient is ``S`` times larger and lands inside fp16's range; the optimizer
divides by ``S`` again (in fp32) before the update.

Too large an ``S`` overflows instead: some gradient becomes inf/NaN. The *dynamic* scaler
finds the largest safe ``S`` by trial:

* overflow  -> skip this optimizer step and halve ``S`` (not below ``min_scale``);
* ``scale_window`` clean steps since the last overflow -> double ``S``.

DeepSpeed adds *hysteresis* (``delayed_shift``): tolerate ``hysteresis - 1`` overflows
before the first halving, so one stray overflow does not cost a factor of two. The
semantics below follow ``DynamicLossScaler.update_scale`` in DeepSpeed's
``deepspeed/runtime/fp16/loss_scaler.py`` (itself from Megatron-LM), step for step:

* on overflow: if ``delayed_shift == 1`` or ``cur_hysteresis == 1`` then
  ``scale = max(scale / scale_factor, min_scale)`` (raising instead if the scale already is
  ``min_scale`` and ``raise_error_at_min_scale``), otherwise ``cur_hysteresis -= 1``; in
  both cases ``last_overflow_iter = cur_iter`` — the step is skipped either way;
* on a clean step: with ``consecutive_hysteresis`` the hysteresis budget is refilled at
  once; then if ``(cur_iter - last_overflow_iter) % scale_window == 0`` the scale grows by
  ``scale_factor`` and (without ``consecutive_hysteresis``) the budget is refilled;
* ``cur_iter += 1`` after every call.

Agreement across data-parallel ranks (every rank must skip the same steps) is the
caller's job: all-reduce the overflow flag with MAX before calling :meth:`update_scale`.
"""
from __future__ import annotations

import numbers
from typing import NamedTuple

import numpy as np


class LossScaleEvent(NamedTuple):
    """One call of ``update_scale``: the scale that step used and whether it overflowed."""

    iteration: int
    scale: float
    overflow: bool


class LossScaleAtMinimumError(RuntimeError):
    """Overflow while the dynamic scale is already ``min_scale`` (DeepSpeed exits here too)."""


def has_overflow(arrays) -> bool:
    """True if any array holds an inf or NaN (``None`` entries, e.g. missing grads, are skipped).

    ``arrays``: one array or an iterable of arrays.
    """
    if arrays is None:
        return False
    if isinstance(arrays, np.ndarray) or np.isscalar(arrays):
        arrays = [arrays]
    return any(a is not None and not np.isfinite(np.asarray(a)).all() for a in arrays)


class StaticLossScaler:
    """A constant loss scale (DeepSpeed's ``LossScaler``; ``"loss_scale": S`` with S > 0)."""

    dynamic = False

    def __init__(self, scale: float = 1.0):
        if not (isinstance(scale, numbers.Real) and not isinstance(scale, bool) and scale > 0):
            raise ValueError(f"static loss scale must be a positive number, got {scale!r}")
        self.cur_scale = float(scale)
        self.cur_iter = 0
        self.history: list[LossScaleEvent] = []

    @property
    def loss_scale(self) -> float:
        return self.cur_scale

    def update_scale(self, overflow: bool) -> None:
        """Record the step; a static scale never changes (an overflowing step is still skipped)."""
        self.history.append(LossScaleEvent(self.cur_iter, self.cur_scale, bool(overflow)))
        self.cur_iter += 1

    _STATE = ("cur_scale", "cur_iter")              # what changes from step to step

    def state_dict(self) -> dict:
        """What a checkpoint keeps to continue exactly (plain data, like torch's GradScaler)."""
        return {"type": type(self).__name__, **{k: getattr(self, k) for k in self._STATE},
                "history": [list(e) for e in self.history]}

    def load_state_dict(self, state: dict) -> None:
        if state.get("type") != type(self).__name__:
            raise ValueError(f"a {state.get('type')} state cannot be loaded into a {type(self).__name__}; "
                             f"set fp16.loss_scale as in the run that saved it")
        for k in self._STATE:
            setattr(self, k, type(getattr(self, k))(state[k]))
        self.history = [LossScaleEvent(int(i), float(s), bool(o)) for i, s, o in state["history"]]

    def __repr__(self) -> str:
        return f"StaticLossScaler(scale={self.cur_scale:g})"


class DynamicLossScaler:
    """DeepSpeed's dynamic loss scaler (names as in DeepSpeed; config keys in brackets).

    init_scale:  first scale tried [``2 ** initial_scale_power``]
    scale_factor: factor to shrink on overflow and grow after a clean window (2)
    scale_window: clean iterations before growing [``loss_scale_window``]
    min_scale:   floor for the scale [``min_loss_scale``]
    delayed_shift: overflows needed before the scale actually shrinks [``hysteresis``]
    consecutive_hysteresis: refill the hysteresis budget after *every* clean step, so only
        ``delayed_shift`` overflows *in a row* shrink the scale [``consecutive_hysteresis``]
    raise_error_at_min_scale: raise :class:`LossScaleAtMinimumError` on an overflow at
        ``min_scale`` (DeepSpeed's default, True) instead of staying there
    """

    dynamic = True

    def __init__(self, init_scale: float = 2.0 ** 32, scale_factor: float = 2.0, scale_window: int = 1000,
                 min_scale: float = 1.0, delayed_shift: int = 1, consecutive_hysteresis: bool = False,
                 raise_error_at_min_scale: bool = True):
        checks = (("init_scale", init_scale, init_scale > 0), ("scale_factor", scale_factor, scale_factor > 1),
                  ("scale_window", scale_window, scale_window >= 1), ("min_scale", min_scale, min_scale > 0),
                  ("delayed_shift", delayed_shift, delayed_shift >= 1))
        for name, value, ok in checks:
            if not ok:
                raise ValueError(f"DynamicLossScaler: bad {name}={value!r}")
        if min_scale > init_scale:             # as the config path (fp16.min_loss_scale) refuses it
            raise ValueError(f"DynamicLossScaler: init_scale={init_scale!r} is below min_scale={min_scale!r}; "
                             f"raise init_scale or lower min_scale")
        self.cur_scale = float(init_scale)
        self.cur_iter = 0
        self.last_overflow_iter = -1
        self.scale_factor = float(scale_factor)
        self.scale_window = int(scale_window)
        self.min_scale = float(min_scale)
        self.delayed_shift = int(delayed_shift)
        self.cur_hysteresis = int(delayed_shift)
        self.consecutive_hysteresis = bool(consecutive_hysteresis)
        self.raise_error_at_min_scale = bool(raise_error_at_min_scale)
        self.history: list[LossScaleEvent] = []

    loss_scale = StaticLossScaler.loss_scale      # the scale this step's loss is multiplied by
    _STATE = ("cur_scale", "cur_iter", "last_overflow_iter", "cur_hysteresis")
    state_dict = StaticLossScaler.state_dict
    load_state_dict = StaticLossScaler.load_state_dict

    def update_scale(self, overflow: bool) -> None:
        """Advance one iteration; ``overflow`` says whether this step's gradients had inf/NaN."""
        self.history.append(LossScaleEvent(self.cur_iter, self.cur_scale, bool(overflow)))
        if overflow:
            if self.delayed_shift == 1 or self.cur_hysteresis == 1:
                # hysteresis used up: back off
                if self.cur_scale == self.min_scale and self.raise_error_at_min_scale:
                    raise LossScaleAtMinimumError(
                        f"overflow at iteration {self.cur_iter} with the loss scale already at "
                        f"min_loss_scale={self.min_scale:g}: the gradients overflow even unscaled")
                self.cur_scale = max(self.cur_scale / self.scale_factor, self.min_scale)
            else:
                # tolerate this overflow: spend one unit of hysteresis, keep the scale
                self.cur_hysteresis -= 1
            self.last_overflow_iter = self.cur_iter
        else:
            if self.consecutive_hysteresis:
                self.cur_hysteresis = self.delayed_shift
            if (self.cur_iter - self.last_overflow_iter) % self.scale_window == 0:
                # a full window without overflow: try a larger scale
                if not self.consecutive_hysteresis:
                    self.cur_hysteresis = self.delayed_shift
                self.cur_scale *= self.scale_factor
        self.cur_iter += 1

    def __repr__(self) -> str:
        return (f"DynamicLossScaler(scale={self.cur_scale:g}, window={self.scale_window}, "
                f"min={self.min_scale:g}, hysteresis={self.cur_hysteresis}/{self.delayed_shift})")


# DeepSpeed's ``fp16`` config section: key -> default (deepspeed/runtime/constants.py).
FP16_DEFAULTS = {
    "enabled": False,
    "auto_cast": False,
    "loss_scale": 0,                # 0 = dynamic; > 0 = this static scale
    "initial_scale_power": 16,
    "loss_scale_window": 1000,
    "hysteresis": 2,
    "consecutive_hysteresis": False,
    "min_loss_scale": 1,
}


def _check(cfg: dict, key: str, kind: str, requirement: str = "", ok=lambda v: True) -> None:
    """Raise a ValueError naming ``fp16.<key>`` unless its value has ``kind`` and passes ``ok``."""
    value = cfg[key]
    if kind == "bool":
        good = isinstance(value, bool)
    elif kind == "int":
        good = isinstance(value, numbers.Integral) and not isinstance(value, bool)
    else:
        good = isinstance(value, numbers.Real) and not isinstance(value, bool)
    if not (good and ok(value)):
        expected = f"a {kind} {requirement}".strip()
        raise ValueError(f"fp16.{key}: bad value {value!r}; expected {expected}")


def from_config(fp16: dict | None):
    """The loss scaler a DeepSpeed ``"fp16": {...}`` section asks for.

    * ``enabled`` false (or no section): ``StaticLossScaler(1.0)`` — no scaling, as
      DeepSpeed does for fp32/bf16 training;
    * ``loss_scale > 0``: ``StaticLossScaler(loss_scale)``;
    * ``loss_scale == 0`` (default): ``DynamicLossScaler`` with ``init_scale =
      2 ** initial_scale_power``, ``scale_window = loss_scale_window``, ``delayed_shift =
      hysteresis``, ``min_scale = min_loss_scale`` and ``consecutive_hysteresis``.

    Missing keys take DeepSpeed's config defaults (:data:`FP16_DEFAULTS`). Unknown keys and
    bad values raise ``ValueError`` naming the key.
    """
    fp16 = {} if fp16 is None else fp16
    if not isinstance(fp16, dict):
        raise TypeError(f"fp16 must be a dict, got {type(fp16).__name__}")
    unknown = sorted(set(fp16) - set(FP16_DEFAULTS))
    if unknown:
        raise ValueError(f"unknown fp16 key(s) {unknown}; known keys: {sorted(FP16_DEFAULTS)}")
    cfg = {**FP16_DEFAULTS, **fp16}
    for key in ("enabled", "auto_cast", "consecutive_hysteresis"):
        _check(cfg, key, "bool")
    _check(cfg, "loss_scale", "number", ">= 0 (0 means dynamic)", lambda v: v >= 0)
    _check(cfg, "initial_scale_power", "int", "in [0, 127] so the scale fits in fp32", lambda v: 0 <= v <= 127)
    _check(cfg, "loss_scale_window", "int", ">= 1", lambda v: v >= 1)
    _check(cfg, "hysteresis", "int", ">= 1", lambda v: v >= 1)
    _check(cfg, "min_loss_scale", "number", "> 0", lambda v: v > 0)
    if 2 ** cfg["initial_scale_power"] < cfg["min_loss_scale"]:
        raise ValueError(f"fp16.initial_scale_power: 2**{cfg['initial_scale_power']} is below "
                         f"fp16.min_loss_scale={cfg['min_loss_scale']}; raise the power or lower the floor")

    if not cfg["enabled"]:
        return StaticLossScaler(1.0)
    if cfg["loss_scale"] > 0:
        return StaticLossScaler(cfg["loss_scale"])
    return DynamicLossScaler(init_scale=2.0 ** cfg["initial_scale_power"],
                             scale_window=cfg["loss_scale_window"],
                             min_scale=cfg["min_loss_scale"],
                             delayed_shift=cfg["hysteresis"],
                             consecutive_hysteresis=cfg["consecutive_hysteresis"])
