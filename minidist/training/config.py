"""The DeepSpeed-style JSON configuration: defaults, validation, clear errors.

Every key has a default, so ``{}`` is a valid config. A key minidist does not know, or a
value of the wrong type or range, raises :class:`ConfigError` naming the full key path
(``zero_optimization.stage``) and how to fix it — before any rank starts training, so
every rank fails the same way and none hangs.
"""
from __future__ import annotations

import difflib
import json
import math

from ..defaults import DEFAULTS, PARAMETER_SERVER, TASK_DIGITS, normalize_schedule
from ..device import get_spec
from ..optim import DEEPSPEED_KEYS, OPTIMIZERS
from ..parallel.tensor.build import config_problem as tensor_config_problem
from ..parallel.pipeline import config_problem as pipeline_config_problem
from ..parallel.context import config_problem as context_config_problem
from ..precision.loss_scaler import from_config
from . import composition
from .config_distillation import check_distillation, student_world
from .config_moe import check_moe
from .config_peft import check_peft
from .config_schema import (_POSITIVE_INTS, ConfigError, _check_types, _merge, data_config,  # noqa: F401
                            sequence_length)   # ConfigError, data_config, sequence_length: re-exported


def load_config(config: "dict | str | None" = None, world_size: int = 1) -> dict:
    """Validate ``config`` (a dict, a JSON path, or None) and return it with every default filled."""
    if config is None:
        config = {}
    if isinstance(config, str):
        try:
            with open(config) as f:
                config = json.load(f)
        except json.JSONDecodeError as e:
            raise ConfigError("<file>", f"{config} is not valid JSON: {e}") from None
    if not isinstance(config, dict):
        raise ConfigError("<root>", f"the config must be a JSON object, got {type(config).__name__}")
    cfg = _merge(DEFAULTS, config)
    _check_numbers(cfg)
    _check_types(cfg, DEFAULTS)
    _check_ranges(cfg)
    try:            # any spelling, e.g. torch.distributed.pipelining's "ScheduleGPipe" -> "gpipe"
        cfg["parallel"]["schedule"] = normalize_schedule(cfg["parallel"]["schedule"])
    except ValueError as e:
        raise ConfigError("parallel.schedule", str(e)) from None
    _check_consistency(cfg, world_size)
    _check_optimizer_params(cfg)
    try:
        get_spec(cfg["device"])
    except (TypeError, ValueError) as e:
        raise ConfigError("device", f"{e}") from None
    return cfg


# whole numbers whose default is not a positive-integer key (None = unset is allowed)
_WHOLE = ("seed", "eval_interval", "model.block_size", "model.vocab_size", "model.n_layer", "model.n_head",
          "model.n_embd", "data.n_digits")
_AT_LEAST_ONE = ("model.block_size", "model.vocab_size", "model.n_layer", "model.n_head", "model.n_embd",
                 "data.n_digits")
_OPEN_UNIT = {"model.dropout": (True, "[0, 1)"), "data.val_fraction": (False, "(0, 1)")}   # key: (0 allowed?, text)


def _leaves(tree, prefix=""):
    for key, value in tree.items():
        if isinstance(value, dict):
            yield from _leaves(value, prefix + key + ".")
        else:
            yield prefix + key, value


def _check_numbers(cfg: dict) -> None:
    """Every number is finite (Python's JSON reader accepts NaN and Infinity), so that the
    key is named here and not by a traceback far away (whole numbers and ranges: :func:`_check_ranges`)."""
    for path, value in _leaves(cfg):
        for v in (value if isinstance(value, list) else [value]):
            if isinstance(v, float) and not math.isfinite(v):
                raise ConfigError(path, f"must be a finite number, got {v}; write a plain number")


def _check_ranges(cfg: dict) -> None:
    for path in _WHOLE:
        section, _, key = path.rpartition(".")
        tree = cfg[section] if section else cfg
        value = tree[key]
        if value is None:
            continue
        if value != int(value):
            raise ConfigError(path, f"must be a whole number, got {value!r}")
        if path in _AT_LEAST_ONE and value < 1:
            raise ConfigError(path, f"must be at least 1, got {value!r}")
        tree[key] = int(value)
    for path in _POSITIVE_INTS:                 # 1e3 is a fine way to write 1000: use it as an int
        section, _, key = path.rpartition(".")
        tree = cfg
        for part in section.split(".") if section else ():    # parallel.context.size: two levels down
            tree = tree[part]
        if tree.get(key) is not None:
            tree[key] = int(tree[key])
    for path, (zero_ok, text) in _OPEN_UNIT.items():
        section, _, key = path.rpartition(".")
        value = cfg[section][key]
        if value is not None and not ((0 <= value if zero_ok else 0 < value) and value < 1):
            raise ConfigError(path, f"must be in {text}, got {value!r}")


# optimizer hyper-parameters: a check and what it asks for
_HYPER_RANGES = {"lr": (lambda v: v >= 0, ">= 0"), "eps": (lambda v: v > 0, "> 0"),
                 "weight_decay": (lambda v: v >= 0, ">= 0"), "momentum": (lambda v: 0 <= v <= 1, "in [0, 1]"),
                 "dampening": (lambda v: 0 <= v <= 1, "in [0, 1]"),
                 "max_coeff": (lambda v: v > 0, "> 0"), "min_coeff": (lambda v: v >= 0, ">= 0")}


def _check_optimizer_params(cfg: dict) -> None:
    """``optimizer.params`` against the optimizer's own hyper-parameters (PyTorch's names)."""
    opt, key = cfg["optimizer"], "optimizer.params"
    params, cls = opt["params"], OPTIMIZERS[opt["type"].lower()]
    known = {**cls.defaults, **DEEPSPEED_KEYS.get(opt["type"].lower(), {})}     # adam_w_mode, torch_adam
    if not isinstance(params, dict):
        raise ConfigError(key, f"expected an object such as {{\"lr\": 0.001}}, got {params!r}")
    for name, value in params.items():
        path = f"{key}.{name}"
        if name not in known:
            close = difflib.get_close_matches(name, list(known), n=1)
            hint = f"did you mean '{close[0]}'? " if close else ""
            raise ConfigError(path, f"{opt['type']} has no hyper-parameter {name!r}; {hint}known: {sorted(known)}")
        if name == "betas":
            ok = (isinstance(value, list) and len(value) == 2
                  and all(isinstance(b, (int, float)) and not isinstance(b, bool) and 0 <= b < 1 for b in value))
            if not ok:
                raise ConfigError(path, f"expected two numbers in [0, 1) such as [0.9, 0.999], got {value!r}")
        elif isinstance(known[name], bool):
            if not isinstance(value, bool):
                raise ConfigError(path, f"expected true or false, got {value!r}")
        elif isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(path, f"expected a number, got {value!r}")
        elif name in _HYPER_RANGES and not _HYPER_RANGES[name][0](value):
            raise ConfigError(path, f"must be {_HYPER_RANGES[name][1]}, got {value!r}")
    merged = {**known, **params}
    if merged.get("min_coeff", 0) > merged.get("max_coeff", 1):
        raise ConfigError(f"{key}.min_coeff", f"the trust ratio's clip needs min_coeff <= max_coeff, got "
                                              f"{merged['min_coeff']} > {merged['max_coeff']}")
    if merged.get("nesterov") and (merged["momentum"] <= 0 or merged["dampening"] != 0):
        raise ConfigError(f"{key}.nesterov", "Nesterov momentum needs momentum > 0 and dampening 0 (as in PyTorch)")


def _check_consistency(cfg: dict, world_size: int) -> None:
    if not isinstance(world_size, int) or world_size < 1:
        raise ConfigError("world_size", f"must be a positive integer, got {world_size!r}")
    par = cfg["parallel"]
    mp = par["tensor"] * par["pipeline"]
    seq, key = sequence_length(cfg)
    world = world_size
    world_size = student_world(cfg, world_size)   # the student's layout: the world less the teacher's own ranks
    if mp <= world_size and world_size % mp == 0:
        composition.check(cfg, world_size)   # which features compose: one table (training/composition.py)
    problem = tensor_config_problem(cfg, world_size, seq)   # tp > world first
    if problem:
        raise ConfigError(*problem)
    if world_size % mp:
        raise ConfigError("parallel", f"world size {world_size} is not divisible by tensor × pipeline = {mp}; "
                                      f"use a world size that is a multiple of {mp}")
    problem = pipeline_config_problem(cfg)      # schedule, micro-batches it can run, layers per chunk
    if problem:
        raise ConfigError(*problem)
    problem = context_config_problem(cfg, world_size, seq)   # cp divides the world, the sequence, the heads
    if problem:
        raise ConfigError(*problem)
    dp = world_size // (mp * par["context"]["size"])
    check_moe(cfg, world_size)               # model.moe and parallel.expert (minidist.moe)
    m = cfg["model"]
    if m["n_embd"] % m["n_head"]:
        raise ConfigError("model.n_head", f"n_embd {m['n_embd']} is not divisible by n_head {m['n_head']}")
    if seq > m["block_size"]:
        if key == "data.seq_len":
            raise ConfigError(key, f"{seq} exceeds model.block_size {m['block_size']}; raise block_size or "
                                   f"lower seq_len")
        raise ConfigError("model.block_size", f"{m['block_size']} is shorter than the {seq} tokens task "
                                              f"{cfg['data']['dataset']!r} feeds the model with "
                                              f"{cfg['data']['n_digits'] or TASK_DIGITS} digits; raise "
                                              f"model.block_size to {seq} or lower data.n_digits")
    tbs = cfg["train_batch_size"]
    expect = cfg["train_micro_batch_size_per_gpu"] * cfg["gradient_accumulation_steps"] * dp
    if tbs is not None and tbs != expect:
        raise ConfigError("train_batch_size", f"{tbs} != train_micro_batch_size_per_gpu × "
                                              f"gradient_accumulation_steps × data-parallel degree = {expect}")
    if cfg["fp16"]["enabled"] or cfg["bf16"]["enabled"]:
        key = "fp16.enabled" if cfg["fp16"]["enabled"] else "bf16.enabled"
        if cfg["dtype"] != "float32":
            raise ConfigError("dtype", f"mixed precision ({key}) keeps fp32 master weights and emulates "
                                       f"fp16/bf16 on float32 arrays; set dtype to 'float32'")
        try:
            from_config(cfg["fp16"])
        except ValueError as e:
            raise ConfigError("fp16", str(e)) from None
    zero = cfg["zero_optimization"]
    pre = zero["stage3_prefetch_bucket_size"]
    if pre != int(pre):
        raise ConfigError("zero_optimization.stage3_prefetch_bucket_size",
                          f"must be a whole number of elements (0 disables prefetch), got {pre!r}")
    if zero["stage"] > 0 and par["data_parallel"] == PARAMETER_SERVER:
        raise ConfigError("parallel.data_parallel", "the parameter server keeps whole optimizer states on "
                                                   "rank 0; ZeRO needs data_parallel 'ddp' (or stage 0)")
    ac = cfg["activation_checkpointing"]
    if ac["partition_activations"]:
        why = ("needs granularity full (it shards the blocks' checkpointed inputs)" if ac["granularity"] != "full"
               else "needs parallel.tensor > 1 (it shards the checkpoints over the tensor-parallel ranks)"
               if par["tensor"] == 1 else
               "under sequence parallelism each rank already keeps only s/t of every checkpoint; set it false"
               if par["sequence_parallel"] else None)
        if why:
            raise ConfigError("activation_checkpointing.partition_activations", why)
    if cfg["distillation"] is not None:
        cfg["distillation"] = check_distillation(cfg, cfg["distillation"], world)
    if cfg["peft"] is not None:
        cfg["peft"] = check_peft(cfg, cfg["peft"])
    if cfg["optimizer"]["type"].lower() not in ("sgd", "adam", "adamw", "lamb"):
        raise ConfigError("optimizer.type", f"{cfg['optimizer']['type']!r} is not supported; "
                                            f"choose SGD, Adam, AdamW or LAMB")
