"""The MoE MLP: a router and E experts in place of a block's dense MLP.

For each group of T tokens (the tokens one rank holds in one micro-batch, GShard's groups;
``group_size`` splits them further, so that one rank can reproduce the groups of many)::

    x (T, h) ─ router ─► logits (T, E) ─ softmax ─► probs ─ route ─► expert, slot, kept (T, k)
    x ─ dispatch ─► buffer (E, C, h)          slot c of expert e holds one token (or zeros)
                    [expert parallelism: all-to-all, each rank its E/ep experts' slots]
      experts   ─► (E, C, h)                  expert e: c_fc → GELU → c_proj (a GPT MLP)
                    [expert parallelism: all-to-all back]
      combine   ─► out (T, h)                 out_t = Σ over kept (t, e) of g_te · expert_e(x_t)

Gates: top-1 (Switch) g = p_e; top-k ≥ 2 (GShard) g_i = p_i / Σ_chosen p. A dropped
assignment contributes zero; the block's residual carries the token through.

Two losses per group, added to the language-model loss of the micro-batch (averaged over
groups as that loss is averaged over tokens):

* load balancing (Fedus et al. 2021, eq. 4; top-k as Megatron-LM): aux = E · Σ_e f_e · P_e,
  f_e the share of the T·k assignments that chose e (before capacity), P_e the mean of probs[:, e];
* router z-loss (Zoph et al. 2022 "ST-MoE", eq. 5): mean over tokens of (logsumexp logits)².

The buffer is built with gathers (``x[slot_sources]``), as Megatron-LM's token dispatchers do;
GShard's Algorithm 2 writes the same dispatch and combine as einsums with one-hot tensors.
"""
from __future__ import annotations

import dataclasses

import numpy as np

from .. import functional as F
from ..defaults import MOE_DEFAULTS
from ..nn import Linear, Module, ModuleList
from ..tensor import Tensor
from .router import route


@dataclasses.dataclass(frozen=True)
class MoEConfig:
    """The ``model.moe`` section (defaults: :data:`minidist.defaults.MOE_DEFAULTS`)."""

    num_experts: int = MOE_DEFAULTS["num_experts"]
    top_k: int = MOE_DEFAULTS["top_k"]
    capacity_factor: float = MOE_DEFAULTS["capacity_factor"]
    aux_loss_coef: float = MOE_DEFAULTS["aux_loss_coef"]
    z_loss_coef: float = MOE_DEFAULTS["z_loss_coef"]
    every_n_layers: int = MOE_DEFAULTS["every_n_layers"]
    group_size: int | None = MOE_DEFAULTS["group_size"]

    def __post_init__(self):
        for name in ("num_experts", "top_k", "every_n_layers"):
            v = getattr(self, name)
            if not isinstance(v, (int, np.integer)) or isinstance(v, bool) or v < 1:
                raise ValueError(f"model.moe.{name} must be a positive integer, got {v!r}")
        if self.top_k > self.num_experts:
            raise ValueError(f"model.moe.top_k {self.top_k} is larger than model.moe.num_experts "
                             f"{self.num_experts}: a token cannot choose more experts than there are; "
                             f"set top_k at most {self.num_experts}")
        if not self.capacity_factor > 0:
            raise ValueError(f"model.moe.capacity_factor must be > 0, got {self.capacity_factor!r}; 1.0 gives each "
                             f"expert T·k/E slots, more leaves room for imbalance")
        for name in ("aux_loss_coef", "z_loss_coef"):
            if getattr(self, name) < 0:
                raise ValueError(f"model.moe.{name} must not be negative, got {getattr(self, name)!r}")
        if self.group_size is not None and (isinstance(self.group_size, bool) or self.group_size < 1):
            raise ValueError(f"model.moe.group_size must be a positive integer or null, got {self.group_size!r}")

    def is_moe_layer(self, layer_id: int) -> bool:
        """Block ``layer_id`` (0-based) is MoE iff ``layer_id % every_n_layers == 0`` (Megatron's moe_layer_freq)."""
        return layer_id % self.every_n_layers == 0


class Expert(Module):
    """One expert: a GPT MLP, c_fc (h → 4h) → GELU → c_proj (4h → h), built by the layer
    factory (so tensor parallelism splits it as it splits the dense MLP)."""

    def __init__(self, fc, proj):
        super().__init__()
        self.c_fc, self.c_proj = fc, proj

    def forward(self, x):
        return self.c_proj(F.gelu(self.c_fc(x)))                    # (n, h) → (n, 4h/t) → (n, h)


class MoEMLP(Module):
    """The block's MLP as a mixture of experts. ``layers``: the layer factory (its
    ``expert_parallel``, when set, moves the slots to the experts' ranks); ``init``: where the
    values come from (``normal(name, shape, std)``, ``zeros(name, shape, when)``)."""

    def __init__(self, moe: MoEConfig, n_embd: int, bias: bool, layers, init, prefix: str,
                 dropout: float, seed: int, proj_std: float):
        super().__init__()
        self.moe = moe
        E, C = moe.num_experts, n_embd
        self.router = Linear.from_arrays(init.normal(prefix + "router.weight", (C, E)), None)   # W_gate, no bias
        self.layers = layers                         # the factory: its token regions (sequence parallelism)
        self.expert_parallel = getattr(layers, "expert_parallel", None)
        ep, r = (1, 0) if self.expert_parallel is None else (self.expert_parallel.size, self.expert_parallel.rank)
        self.expert_ids = list(range(r * E // ep, (r + 1) * E // ep))  # this rank's whole experts
        experts = []
        for e in range(E):
            p = f"{prefix}experts.{e}."
            fc_w, fc_b = init.normal(p + "c_fc.weight", (C, 4 * C)), init.zeros(p + "c_fc.bias", (4 * C,), bias)
            pr_w = init.normal(p + "c_proj.weight", (4 * C, C), proj_std)
            pr_b = init.zeros(p + "c_proj.bias", (C,), bias)
            if e in self.expert_ids:                                 # another rank's expert: drawn, not kept
                experts.append(Expert(layers.column_linear(fc_w, fc_b), layers.row_linear(pr_w, pr_b)))
        self.experts = ModuleList(experts, names=self.expert_ids)
        for p in self.experts.parameters():
            p.expert = True
        self.dropout = layers.dropout(dropout, seed)        # on the combined output, where the dense MLP has it
        self.drop_tokens = True              # False: room for every token (generation: see moe.dropless)
        self.stats: list[dict] = []          # one entry per group of the last forward
        self.loss = None                     # the last forward's aux + z losses (a Tensor), mean over groups

    # -- the steps -------------------------------------------------------------------------------
    def forward(self, x):
        # under sequence parallelism: every position on every tp rank, the experts' linears as
        # without it (f, g), then this rank's positions again (the group is the whole sequence)
        x = self.layers.gather_tokens(x)                             # (B, T/t, C) → (B, T, C)
        with self.layers.replicated_tokens():
            out = self.mixture(x)
        return self.dropout(self.layers.scatter_tokens(out))        # (B, T, C) → (B, T/t, C)

    def mixture(self, x):
        """(B, S, h) → (B, S, h): every group's tokens through their experts, weighted."""
        B, S, h = x.shape
        xt = x.reshape(B * S, h)                                     # (B·S, h): tokens in batch order
        # dropless (generation, moe.dropless): no capacity, so the groups would change only the
        # balance losses, which decoding does not use; one group of any number of tokens
        n = B * S if self.moe.group_size is None or not self.drop_tokens else self.moe.group_size
        if (B * S) % n:
            raise ValueError(f"model.moe.group_size {n} does not divide the {B * S} tokens of this micro-batch "
                             f"({B} × {S}); choose a divisor of micro-batch × seq_len")
        self.stats, outs, losses = [], [], []
        for g in range(B * S // n):
            out, loss = self.group(xt[g * n:(g + 1) * n])
            outs.append(out)
            losses.append(loss)
        out = outs[0] if len(outs) == 1 else F.concat(outs, axis=0)
        # the mean over groups (1/G in the loss's dtype: a Python float would make a float32 tensor)
        self.loss = losses[0] if len(losses) == 1 else sum(losses[1:], losses[0]) * _const(1.0 / len(losses), x)
        return out.reshape(B, S, h)

    def group(self, x):
        """One group: x (T, h) → (out (T, h), coef_aux · aux + coef_z · z)."""
        moe = self.moe
        T, h = x.shape
        E, k = moe.num_experts, moe.top_k
        logits = self.router(x)                                      # (T, E)
        probs = F.softmax(logits, axis=-1)
        # dropless: capacity factor E/k gives C = T, a slot in every expert for every token
        r = route(probs.data, k, moe.capacity_factor if self.drop_tokens else E / k)
        C = r.capacity
        # dispatch: slot (e, c) holds its token, or zeros (row T) where no token took it
        zero = np.zeros((1, h), dtype=x.data.dtype)
        buf = F.concat([x, zero], axis=0)[r.slot_sources()].reshape(E, C, h)       # (E, C, h)
        y = self.run_experts(buf)                                                  # (E, C, h)
        # combine: each kept assignment's output, weighted by its gate; a dropped one reads zeros
        y = F.concat([y.reshape(E * C, h), zero], axis=0)[r.slot_positions()]     # (T, k, h)
        gates = probs[np.arange(T)[:, None], r.expert]                             # (T, k): p of the chosen
        if k > 1:
            gates = gates / gates.sum(axis=-1, keepdims=True)                      # GShard: renormalised over k
        out = (y * gates.reshape(T, k, 1)).sum(axis=1)                             # (T, h)
        loss = self.losses(logits, probs, r.load, T)
        self.stats.append({"load": r.load.copy(), "dropped": r.dropped, "capacity": C, "tokens": T,
                           "aux_loss": self._aux, "z_loss": self._z})
        return out, loss

    def run_experts(self, buf):
        """(E, C, h) slots → the experts' outputs (E, C, h); under expert parallelism the slots
        travel to their expert's rank and back (:mod:`minidist.parallel.expert`)."""
        ep = self.expert_parallel
        mine = buf if ep is None else ep.dispatch(buf)             # (E/ep, ep·C, h): my experts' slots
        n, s, h = mine.shape
        ys = [self.experts[e](mine[i]).reshape(1, s, h) for i, e in enumerate(self.expert_ids)]
        y = ys[0] if len(ys) == 1 else F.concat(ys, axis=0)         # (E/ep, ep·C, h)
        return y if ep is None else ep.combine(y)                  # (E, C, h)

    def losses(self, logits, probs, load, T: int):
        """coef_aux · E · Σ_e f_e · P_e + coef_z · mean_t (logsumexp logits_t)²."""
        moe = self.moe
        E, k = moe.num_experts, moe.top_k
        f = (load / (T * k)).astype(probs.data.dtype)                   # (E,) constant: routing is not differentiable
        aux = (probs.mean(axis=0) * Tensor(f)).sum() * _const(E, probs)
        m = logits.data.max(axis=-1, keepdims=True)                     # a constant shift: its gradient cancels
        lse = F.log(F.exp(logits - Tensor(m)).sum(axis=-1)) + Tensor(m[:, 0])
        z = (lse * lse).mean()
        self._aux, self._z = float(aux.data), float(z.data)
        return aux * _const(moe.aux_loss_coef, aux) + z * _const(moe.z_loss_coef, z)


def _const(v, like) -> np.ndarray:
    """A scalar in ``like``'s dtype."""
    return np.asarray(v, dtype=like.data.dtype)
