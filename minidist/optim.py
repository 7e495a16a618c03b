"""Optimizers: SGD (momentum), Adam, AdamW, LAMB — with PyTorch's hyper-parameter names.

Each optimizer splits into two parts so that ZeRO can shard it:

* ``init_state(shape, dtype)`` — the state arrays one parameter (or one flat shard) needs;
* ``update(param, grad, state, group)`` — the in-place update of *arrays*.

:meth:`Optimizer.step` applies them to whole parameters; ZeRO applies the very same
functions to the flat shard a rank owns (Rajbhandari et al. 2020). State arrays are
charged to the parameter's device under "optimizer_states" (K bytes per parameter:
Adam keeps m and v, 8 bytes in fp32; with mixed precision the fp32 master copy adds 4 → K=12).
"""
from __future__ import annotations

import numpy as np

from .memory import nbytes


class Optimizer:
    defaults: dict = {}
    shardable = True   # False when the update needs whole-tensor norms (LAMB)

    def __init__(self, params, **hyper):
        unknown = set(hyper) - set(self.defaults)
        if unknown:
            raise TypeError(f"{type(self).__name__} got unknown hyper-parameter(s) {sorted(unknown)}; "
                            f"known: {sorted(self.defaults)}")
        group = {**self.defaults, **hyper}
        self._check(group)
        params = list(params)
        if not params:
            raise ValueError("optimizer got an empty parameter list")
        if any(isinstance(p, dict) for p in params):
            raise TypeError(f"{type(self).__name__}: parameter groups (dicts as in torch.optim) are not supported; "
                            f"minidist's optimizers hold one group: pass the parameters themselves, and build a "
                            f"second optimizer for parameters that need other hyper-parameters (e.g. weight_decay 0)")
        self.param_groups = [{"params": params, **group}]
        self.state: dict[int, dict] = {}        # id(param) -> {"step": int, name: ndarray}
        self._handles: dict[int, list] = {}

    def _check(self, group):
        if group["lr"] < 0:
            raise ValueError(f"optimizer lr must be >= 0, got {group['lr']}")

    # -- the two halves ---------------------------------------------------------------------
    def init_state(self, shape, dtype=np.float32) -> dict:
        raise NotImplementedError

    def update(self, param: np.ndarray, grad: np.ndarray, state: dict, group: dict) -> None:
        raise NotImplementedError

    # -- whole-parameter driver -----------------------------------------------------------
    def state_for(self, p) -> dict:
        st = self.state.get(id(p))
        if st is None:
            st = self.state[id(p)] = self.init_state(p.shape, p.dtype)
            dev = getattr(p, "device", None)
            if dev is not None:
                pool, label = self.state_pool(dev)
                self._handles[id(p)] = [pool.alloc(nbytes(a), "optimizer_states", f"{p.name}.{k}{label}")
                                        for k, a in st.items() if isinstance(a, np.ndarray)]
        return st

    def state_pool(self, device) -> tuple:
        """Where the states are charged, and a label: the device (a paged optimizer: the host)."""
        return device.memory, ""

    def step(self) -> None:
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is not None:
                    self.update_for(p, p.data, p.grad, self.state_for(p), group)

    def update_for(self, p, param: np.ndarray, grad: np.ndarray, state: dict, group: dict) -> None:
        """:meth:`update` of the arrays of parameter ``p`` (its data, or its fp32 master)."""
        self.update(param, grad, state, group)

    def zero_grad(self, set_to_none: bool = True) -> None:
        for group in self.param_groups:
            for p in group["params"]:
                if set_to_none:
                    p.grad = None
                elif p.grad is not None:
                    p.grad[...] = 0

    def state_bytes(self) -> int:
        return sum(nbytes(a) for st in self.state.values() for a in st.values() if isinstance(a, np.ndarray))

    @property
    def lr(self) -> float:
        return self.param_groups[0]["lr"]

    @lr.setter
    def lr(self, value: float) -> None:
        for g in self.param_groups:
            g["lr"] = value


class SGD(Optimizer):
    """SGD with momentum as PyTorch: buf = μ·buf + (1-dampening)·g (buf = g at first), p -= lr·buf."""

    defaults = {"lr": 1e-2, "momentum": 0.0, "dampening": 0.0, "weight_decay": 0.0, "nesterov": False}

    def init_state(self, shape, dtype=np.float32):
        st = {"step": 0}
        if self.param_groups[0]["momentum"]:
            st["momentum_buffer"] = np.zeros(shape, dtype)
        return st

    def update(self, param, grad, state, group):
        g = grad + group["weight_decay"] * param if group["weight_decay"] else grad
        mu = group["momentum"]
        if mu:
            buf = state["momentum_buffer"]
            if state["step"] == 0:
                buf[...] = g
            else:
                buf *= mu
                buf += (1 - group["dampening"]) * g
            g = g + mu * buf if group["nesterov"] else buf
        state["step"] += 1
        param -= group["lr"] * g


class Adam(Optimizer):
    """Adam (Kingma & Ba 2015) with bias correction; ``weight_decay`` is L2 added to the grad."""

    defaults = {"lr": 1e-3, "betas": (0.9, 0.999), "eps": 1e-8, "weight_decay": 0.0}
    decoupled = False

    def _check(self, group):
        super()._check(group)
        b1, b2 = group["betas"]
        if not (0 <= b1 < 1 and 0 <= b2 < 1):
            raise ValueError(f"betas must be in [0, 1), got {group['betas']}")

    def init_state(self, shape, dtype=np.float32):
        return {"step": 0, "exp_avg": np.zeros(shape, dtype), "exp_avg_sq": np.zeros(shape, dtype)}

    def _direction(self, param, grad, state, group):
        """Advance m, v and return the bias-corrected Adam direction m̂ / (√v̂ + ε)."""
        b1, b2 = group["betas"]
        wd = group["weight_decay"]
        g = grad + wd * param if (wd and not self.decoupled) else grad
        state["step"] += 1
        t = state["step"]
        m, v = state["exp_avg"], state["exp_avg_sq"]
        m *= b1
        m += (1 - b1) * g
        v *= b2
        v += (1 - b2) * (g * g)
        denom = np.sqrt(v / (1 - b2 ** t)) + group["eps"]
        return (m / (1 - b1 ** t)) / denom

    def update(self, param, grad, state, group):
        """The same arithmetic as ``_direction`` followed by the step, step for step (so the
        result is bit-identical), but in place over cache-sized blocks with two scratch
        buffers: no parameter-sized temporaries, each block's passes stay in L2."""
        if not (param.flags.c_contiguous and grad.flags.c_contiguous and grad.dtype == param.dtype
                and state["exp_avg"].dtype == param.dtype):
            return self._update_reference(param, grad, state, group)   # rare layouts: same maths
        b1, b2 = group["betas"]
        lr, wd, eps = group["lr"], group["weight_decay"], group["eps"]
        state["step"] += 1
        t = state["step"]
        bc1, bc2 = 1 - b1 ** t, 1 - b2 ** t                  # bias corrections
        flat = [a.reshape(-1) for a in (param, grad, state["exp_avg"], state["exp_avg_sq"])]
        n = param.size
        step = max(1, _BLOCK_BYTES // param.itemsize)
        tmp = np.empty(min(step, n), dtype=param.dtype)
        d = np.empty_like(tmp)
        for start in range(0, n, step):
            p, g, m, v = (a[start:start + step] for a in flat)
            k = p.size
            if wd and not self.decoupled:                    # L2 penalty: g + wd·p
                g = np.add(g, np.multiply(wd, p, out=d[:k]), out=d[:k])
            m *= b1                                          # m = β1·m + (1-β1)·g
            m += np.multiply(1 - b1, g, out=tmp[:k])
            gg = np.multiply(g, g, out=tmp[:k])              # v = β2·v + (1-β2)·g²
            gg *= 1 - b2
            v *= b2
            v += gg
            den = np.divide(v, bc2, out=tmp[:k])             # √(v / (1-β2ᵗ)) + ε
            np.sqrt(den, out=den)
            den += eps
            u = np.divide(m, bc1, out=d[:k])                 # (m / (1-β1ᵗ)) / denom
            u /= den
            if self.decoupled and wd:                        # AdamW: p·(1 - lr·wd)
                p *= 1 - lr * wd
            u *= lr
            p -= u

    def _update_reference(self, param, grad, state, group):
        """The plain update on whole arrays (the readable version ``update`` must equal)."""
        d = self._direction(param, grad, state, group)
        if self.decoupled and group["weight_decay"]:
            param *= 1 - group["lr"] * group["weight_decay"]
        param -= group["lr"] * d


# Adam's update walks parameters in blocks of this many bytes (five blocks in L2).
_BLOCK_BYTES = 256 * 1024


class AdamW(Adam):
    """Adam with decoupled weight decay (Loshchilov & Hutter 2019): p ← p·(1 - lr·wd) - lr·m̂/(√v̂+ε)."""

    defaults = {"lr": 1e-3, "betas": (0.9, 0.999), "eps": 1e-8, "weight_decay": 1e-2}
    decoupled = True


class LAMB(Adam):
    """LAMB (You et al. 2020, Algorithm 2): the bias-corrected Adam direction r plus decoupled
    decay, u = r + λ·p, scaled per tensor by the trust ratio ‖p‖ / ‖u‖ (1 when either norm is
    0; no global gradient-norm pre-normalisation). By default φ is the identity, as in the
    paper: no clipping. DeepSpeed's FusedLamb clips the ratio to [``min_coeff``,
    ``max_coeff``] (its defaults 0.01 and 10) and takes ``eps`` 1e-8: give those three
    hyper-parameters to run its arithmetic. Needs whole-tensor norms, so it is not shardable
    by ZeRO."""

    defaults = {"lr": 1e-3, "betas": (0.9, 0.999), "eps": 1e-6, "weight_decay": 0.0,
                "max_coeff": float("inf"), "min_coeff": 0.0}
    shardable = False
    decoupled = True     # the decay is added to the Adam direction below, never to the gradient

    def _check(self, group):
        super()._check(group)
        if not 0 <= group["min_coeff"] <= group["max_coeff"] or group["max_coeff"] <= 0:
            raise ValueError(f"LAMB needs 0 <= min_coeff <= max_coeff and max_coeff > 0 (the trust ratio's "
                             f"clip), got min_coeff {group['min_coeff']} and max_coeff {group['max_coeff']}")

    def __init__(self, params, **hyper):
        super().__init__(params, **hyper)
        # ``(p, [‖w‖², ‖u‖²]) -> the whole tensor's``: under tensor parallelism a rank holds a
        # slice of ``p``, and the trust ratio needs the whole tensor's norms (set by the trainer)
        self.whole_tensor_squares = None
        self._current = None

    def update_for(self, p, param, grad, state, group) -> None:
        self._current = p
        try:
            self.update(param, grad, state, group)
        finally:
            self._current = None

    def update(self, param, grad, state, group):
        r = self._direction(param, grad, state, group)
        if group["weight_decay"]:
            r = r + group["weight_decay"] * param
        if self.whole_tensor_squares is not None and self._current is not None:
            squares = np.array([np.sum(np.square(param, dtype=np.float64)), np.sum(np.square(r, dtype=np.float64))])
            w_norm, r_norm = np.sqrt(self.whole_tensor_squares(self._current, squares)).tolist()
        else:
            w_norm, r_norm = float(np.linalg.norm(param)), float(np.linalg.norm(r))
        trust = w_norm / r_norm if w_norm > 0 and r_norm > 0 else 1.0
        if w_norm > 0 and r_norm > 0:                  # DeepSpeed's FusedLamb clips the ratio itself only
            trust = min(max(trust, group["min_coeff"]), group["max_coeff"])
        param -= group["lr"] * trust * r


OPTIMIZERS = {"sgd": SGD, "adam": Adam, "adamw": AdamW, "lamb": LAMB}


# DeepSpeed's own keys of ``optimizer.params`` for Adam and AdamW (runtime/config.py), with its
# defaults: ``adam_w_mode`` (decoupled weight decay) and ``torch_adam`` (torch.optim's Adam or
# AdamW in place of FusedAdam: the same arithmetic here).
DEEPSPEED_KEYS = {"adam": {"adam_w_mode": True, "torch_adam": False},
                  "adamw": {"adam_w_mode": True, "torch_adam": False}}


def resolve(name: str, hyper: dict, deepspeed: bool = False) -> tuple[type, dict]:
    """The class and hyper-parameters ``optimizer.type`` and ``optimizer.params`` name
    (case-insensitive), as torch.optim reads them: ``"Adam"``'s ``weight_decay`` is an L2
    penalty. ``deepspeed``: as a DeepSpeed config means them (the trainer's): there, as in
    DeepSpeed's engine (``_configure_basic_optimizer``), ``"Adam"`` decays decoupled, as AdamW,
    unless ``adam_w_mode`` is false, and ``torch_adam`` is accepted (the same arithmetic here);
    ``"AdamW"`` always decays decoupled. Adam's default ``weight_decay`` stays 0."""
    key = str(name).lower()
    if key not in OPTIMIZERS:
        raise ValueError(f"optimizer.type {name!r} is not supported; choose one of "
                         f"{sorted(k.capitalize() if k != 'adamw' else 'AdamW' for k in OPTIMIZERS)}")
    hyper = dict(hyper)
    options = {k: hyper.pop(k, v) for k, v in DEEPSPEED_KEYS.get(key, {}).items()} if deepspeed else {}
    if "betas" in hyper:
        hyper["betas"] = tuple(hyper["betas"])
    if key == "adam" and options.get("adam_w_mode") and hyper.get("weight_decay"):
        key = "adamw"                          # with no decay the two are the same arithmetic
    return OPTIMIZERS[key], hyper


def build(name: str, params, deepspeed: bool = False, **hyper) -> Optimizer:
    """An optimizer from its ``optimizer.type`` name and hyper-parameters (:func:`resolve`:
    torch.optim's meaning, or with ``deepspeed`` a DeepSpeed config's, as the trainer builds it)."""
    cls, hyper = resolve(name, hyper, deepspeed)
    return cls(params, **hyper)
