"""The ``model.moe`` section and ``parallel.expert`` (run by :mod:`minidist.moe` and
:mod:`minidist.parallel.expert`): their defaults and checks, before any rank starts.

Defaults: :data:`minidist.defaults.MOE_DEFAULTS`. Refused, naming the key and the fix:
top_k > num_experts, capacity_factor ≤ 0, num_experts not divisible by parallel.expert,
parallel.expert not dividing the data-parallel degree, parallel.expert > 1 without experts,
a group_size that does not divide a rank's tokens per micro-batch. What MoE and EP compose
with is the table's (:mod:`.composition`).
"""
from __future__ import annotations

from ..defaults import MOE_DEFAULTS
from .config_schema import ConfigError, _merge, sequence_length


def _int(key: str, value, least: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != int(value) or value < least:
        raise ConfigError(key, f"must be a whole number ≥ {least}, got {value!r}")
    return int(value)


def check_moe(cfg: dict, world_size: int) -> None:
    """Fill and check ``cfg["model"]["moe"]`` (in place) and ``parallel.expert``."""
    given, ep = cfg["model"]["moe"], cfg["parallel"]["expert"]
    if given is None:
        if ep > 1:
            raise ConfigError("parallel.expert", f"{ep} splits the experts of a mixture of experts, but the model "
                                                 f"has none: add a model.moe section or set parallel.expert 1")
        return
    if not isinstance(given, dict):
        raise ConfigError("model.moe", f"expected an object such as {{\"num_experts\": 4, \"top_k\": 2}} or null, "
                                       f"got {given!r}")
    m = _merge(MOE_DEFAULTS, given, "model.moe.")
    for key in ("num_experts", "top_k", "every_n_layers"):
        m[key] = _int(f"model.moe.{key}", m[key])
    for key in ("capacity_factor", "aux_loss_coef", "z_loss_coef"):
        v = m[key]
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise ConfigError(f"model.moe.{key}", f"expected a number, got {v!r}")
        if v < 0:
            raise ConfigError(f"model.moe.{key}", f"must not be negative, got {v!r}")
    if m["top_k"] > m["num_experts"]:
        raise ConfigError("model.moe.top_k", f"{m['top_k']} is larger than model.moe.num_experts {m['num_experts']}: "
                                             f"a token cannot choose more experts than there are; set top_k ≤ "
                                             f"{m['num_experts']} or add experts")
    if not m["capacity_factor"] > 0:
        raise ConfigError("model.moe.capacity_factor", f"must be > 0, got {m['capacity_factor']!r}; 1.0 gives each "
                                                       f"expert T·k/E slots per group, 1.25 leaves room for imbalance")
    par = cfg["parallel"]
    dp = world_size // (par["tensor"] * par["pipeline"] * par["context"]["size"])
    if m["num_experts"] % ep:
        divisors = [d for d in range(1, m["num_experts"] + 1) if m["num_experts"] % d == 0]
        raise ConfigError("parallel.expert", f"model.moe.num_experts {m['num_experts']} is not divisible by "
                                             f"parallel.expert {ep}: each ep rank holds E/ep whole experts; choose "
                                             f"parallel.expert among {divisors}")
    if dp % ep:
        raise ConfigError("parallel.expert", f"{ep} does not divide the data-parallel degree {dp} (world size "
                                             f"{world_size} ÷ tensor × pipeline × context): the ep ranks are drawn "
                                             f"from the data-parallel ranks; choose a divisor of {dp} or launch "
                                             f"more ranks")
    if m["group_size"] is not None:
        m["group_size"] = _int("model.moe.group_size", m["group_size"])
        tokens = cfg["train_micro_batch_size_per_gpu"] * sequence_length(cfg)[0]
        if tokens % m["group_size"]:
            raise ConfigError("model.moe.group_size", f"{m['group_size']} does not divide the {tokens} tokens a rank "
                                                      f"holds per micro-batch (train_micro_batch_size_per_gpu × "
                                                      f"seq_len); choose a divisor, or null for one group")
    cfg["model"]["moe"] = m
