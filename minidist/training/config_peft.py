"""The ``peft`` section of the config (run by :mod:`minidist.peft`): its defaults and checks.

The keys are the Hugging Face PEFT library's (``peft_type``, ``r``, ``lora_alpha``,
``lora_dropout``, ``target_modules``, ``num_virtual_tokens``, ``prefix_projection``,
``encoder_hidden_size``), the adapter's width LLM-Adapters' ``bottleneck_size``, QLoRA's 4-bit
base bitsandbytes' (``load_in_4bit``, ``bnb_4bit_quant_type``, ``bnb_4bit_use_double_quant``);
:data:`minidist.defaults.PEFT_DEFAULTS` has every default and ``PEFT_KEYS`` which method
reads which key. A key the chosen method does not read is refused, not ignored.
"""
from __future__ import annotations

from ..defaults import LORA_TARGETS, PEFT_DEFAULTS, PEFT_KEYS, PEFT_TYPES, PREFIX_TUNING
from .config_schema import ConfigError, _merge

_REPLACED_TYPES = {
    "P_TUNING": "P_TUNING is P-tuning v1 (a prompt encoder at the input only); P-tuning v2 (Liu et al. 2022) is "
                "peft_type PREFIX_TUNING with prefix_projection false",
    "P_TUNING_V2": "P-tuning v2 (Liu et al. 2022) is peft_type PREFIX_TUNING with prefix_projection false",
    "QLORA": "QLoRA (Dettmers et al. 2023) is peft_type LORA with load_in_4bit true",
    "PROMPT_TUNING": "prompt tuning (soft tokens at the input only) is not built; PREFIX_TUNING puts them in "
                     "every layer",
}


# the four linear layers of a block by their names in it (minidist.peft.costs.lora_matrices)
BLOCK_LINEARS = ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")


def _positive_int(key: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != int(value) or value < 1:
        raise ConfigError(f"peft.{key}", f"must be a positive integer, got {value!r}")


def check_peft(cfg: dict, given) -> dict:
    """The ``peft`` section with its defaults, checked; ``cfg`` is the rest of the config."""
    if not isinstance(given, dict):
        raise ConfigError("peft", f"expected an object such as {{'peft_type': 'LORA', 'r': 8}} or null, got {given!r}")
    p = _merge(PEFT_DEFAULTS, given, "peft.")
    kind = p["peft_type"] = str(p["peft_type"]).upper()
    if kind in _REPLACED_TYPES:
        raise ConfigError("peft.peft_type", _REPLACED_TYPES[kind])
    if kind not in PEFT_TYPES:
        raise ConfigError("peft.peft_type", f"{given['peft_type']!r} is not built; choose one of {list(PEFT_TYPES)}")
    for key in given:
        if kind not in PEFT_KEYS[key]:
            raise ConfigError(f"peft.{key}", f"applies to peft_type {' or '.join(PEFT_KEYS[key])}, not {kind}; "
                                             f"remove it")
    for key in ("r", "bottleneck_size", "num_virtual_tokens", "encoder_hidden_size"):
        _positive_int(key, p[key])
        p[key] = int(p[key])
    for key in ("prefix_projection", "load_in_4bit", "bnb_4bit_use_double_quant", "paged_optimizer"):
        if not isinstance(p[key], bool):
            raise ConfigError(f"peft.{key}", f"expected true or false, got {p[key]!r}")
    alpha = p["lora_alpha"]
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or alpha <= 0:
        raise ConfigError("peft.lora_alpha", f"must be a number > 0 (the update is scaled by lora_alpha / r), "
                                             f"got {alpha!r}")
    drop = p["lora_dropout"]
    if isinstance(drop, bool) or not isinstance(drop, (int, float)) or not 0 <= drop < 1:
        raise ConfigError("peft.lora_dropout", f"must be in [0, 1), got {drop!r}")
    targets = p["target_modules"]
    if isinstance(targets, str):
        targets = p["target_modules"] = [targets]
    if not isinstance(targets, list) or not targets or not all(isinstance(t, str) for t in targets):
        raise ConfigError("peft.target_modules", f"expected a list of layer names such as ['c_attn'], got {targets!r}")
    for t in targets:                # matched as Hugging Face PEFT matches: the whole name or its suffix
        if not any(name == t or name.endswith("." + t) for name in BLOCK_LINEARS):
            raise ConfigError("peft.target_modules", f"{t!r} is no linear layer of a block; the GPT's are "
                                                     f"{', '.join(LORA_TARGETS)} ('c_proj' names both projections)")
    if p["bnb_4bit_quant_type"] != "nf4":
        raise ConfigError("peft.bnb_4bit_quant_type", f"{p['bnb_4bit_quant_type']!r} is not built; QLoRA's base is "
                                                      f"'nf4' (minidist.compression.nf4)")
    zero = cfg["zero_optimization"]["stage"]
    if p["load_in_4bit"] and zero == 3:
        raise ConfigError("peft.load_in_4bit", "the 4-bit base is not partitioned by ZeRO-3 here (it would be "
                                               "gathered as NF4 codes); use zero_optimization.stage 0, 1 or 2")
    if p["paged_optimizer"] and zero > 0:
        raise ConfigError("peft.paged_optimizer", "ZeRO keeps its own optimizer shards; for states in host memory "
                                                  "use zero_optimization.offload_optimizer, or stage 0 with a "
                                                  "paged optimizer")
    if kind == PREFIX_TUNING and cfg["parallel"]["context"]["size"] > 1:
        raise ConfigError("peft.peft_type", "prefix-tuning and P-tuning v2 add key/value positions that context "
                                            "parallelism's ring and all-to-all do not carry: not built together; "
                                            "use peft_type LORA with parallel.context, or set parallel.context.size 1")
    if kind == PREFIX_TUNING and p["prefix_projection"] and \
            cfg["activation_checkpointing"]["granularity"] == "full":
        raise ConfigError("peft.prefix_projection", "the reparameterisation MLP runs once per forward, outside the "
                                                    "recomputed blocks, which would replay it without its graph: not "
                                                    "built with full recomputation; set "
                                                    "activation_checkpointing.granularity to none or selective")
    return p
