"""The config's shape: which keys exist, their types and choices, and :class:`ConfigError`.

The lowest of the three config modules: :mod:`.config` (``load_config`` and the checks of
values and consistency) and :mod:`.config_distillation` build on it.
"""
from __future__ import annotations

import copy
import difflib

from ..defaults import (DATA_PARALLEL, DEFAULT_DATASET, TASK_DIGITS, TEXT_SEQ_LEN)
from .data import TASKS, SyntheticTask, available_corpora

# keys whose value is free-form (checked by the component that uses it)
_FREE = {"optimizer.params", "device", "distillation", "parallel.pass_times", "peft", "model.moe"}

_CHOICES = {
    "dtype": ("float32", "float64"),
    "parallel.data_parallel": DATA_PARALLEL,
    "zero_optimization.stage": (0, 1, 2, 3),
    "zero_optimization.offload_optimizer.device": ("none", "cpu"),
    "activation_checkpointing.granularity": ("none", "selective", "full"),
    "activation_checkpointing.method": ("uniform", "block"),
    "parallel.context.algorithm": ("ring", "ulysses"),
}

# keys other frameworks have that minidist spells differently: what to write instead
_REPLACED = {
    "parallel.micro_batches": "the pipeline's micro-batches per step are gradient_accumulation_steps "
                              "(as in DeepSpeed's pipeline engine); set gradient_accumulation_steps instead",
    # Megatron-LM's argument names (per GPU, as minidist's keys)
    "micro_batch_size": "Megatron's micro_batch_size (per GPU) is train_micro_batch_size_per_gpu here",
    "global_batch_size": "Megatron's global_batch_size is DeepSpeed's train_batch_size here (micro-batch × "
                         "gradient_accumulation_steps × data-parallel ranks)",
    "tensor_model_parallel_size": "Megatron's tensor_model_parallel_size is parallel.tensor here",
    "pipeline_model_parallel_size": "Megatron's pipeline_model_parallel_size is parallel.pipeline here",
    "context_parallel_size": "Megatron's context_parallel_size is parallel.context.size here",
    "expert_model_parallel_size": "Megatron's expert_model_parallel_size is parallel.expert here",
    "sequence_parallel": "Megatron's sequence_parallel is parallel.sequence_parallel here",
    "virtual_pipeline_model_parallel_size": "Megatron's virtual_pipeline_model_parallel_size is "
                                            "parallel.virtual_stages here",
    "parallel.tensor_model_parallel_size": "Megatron's tensor_model_parallel_size is parallel.tensor here",
    "parallel.pipeline_model_parallel_size": "Megatron's pipeline_model_parallel_size is parallel.pipeline here",
    "parallel.context_parallel_size": "Megatron's context_parallel_size is parallel.context.size here",
    "parallel.expert_model_parallel_size": "Megatron's expert_model_parallel_size is parallel.expert here",
    "parallel.virtual_pipeline_model_parallel_size": "Megatron's virtual_pipeline_model_parallel_size is "
                                                     "parallel.virtual_stages here",
    # DeepSpeed keys of features minidist does not build
    "zero_optimization.offload_param": "parameter offload (ZeRO-Infinity's offload_param) is not built; "
                                       "zero_optimization.offload_optimizer moves the optimizer (ZeRO-Offload)",
    "data_types": "DeepSpeed's data_types (grad_accum_dtype) is not built: gradients accumulate in the "
                  "parameters' format (bf16: in bf16), and dtype sets the parameters' format",
}

_POSITIVE_INTS = {"train_micro_batch_size_per_gpu", "gradient_accumulation_steps", "steps",
                  "eval_iters", "zero_optimization.reduce_bucket_size",
                  "zero_optimization.allgather_bucket_size", "zero_optimization.stage3_max_live_parameters",
                  "fp16.loss_scale_window", "fp16.hysteresis", "parallel.tensor", "parallel.pipeline",
                  "parallel.virtual_stages", "parallel.make_vocab_size_divisible_by", "data.seq_len",
                  "activation_checkpointing.num_layers", "parallel.context.size", "parallel.expert"}


class ConfigError(ValueError):
    """A configuration key is unknown or its value is invalid. ``key`` is the full path."""

    def __init__(self, key: str, message: str):
        self.key = key
        super().__init__(f"config key '{key}': {message}")


def _merge(defaults: dict, given: dict, prefix: str = "") -> dict:
    out = copy.deepcopy(defaults)
    for key, value in given.items():
        path = prefix + key
        if path in _REPLACED:
            raise ConfigError(path, _REPLACED[path])
        if key not in defaults:
            close = difflib.get_close_matches(key, list(defaults), n=1)
            hint = f"; did you mean '{prefix}{close[0]}'?" if close else f"; known keys here: {sorted(defaults)}"
            raise ConfigError(path, f"unknown key{hint}")
        if isinstance(defaults[key], dict) and path not in _FREE:
            if not isinstance(value, dict):
                raise ConfigError(path, f"expected an object with keys {sorted(defaults[key])}, got {value!r}")
            out[key] = _merge(defaults[key], value, path + ".")
        else:
            out[key] = value
    return out


def _check_types(cfg: dict, defaults: dict, prefix: str = "") -> None:
    for key, default in defaults.items():
        path, value = prefix + key, cfg[key]
        if path in _FREE or default is None and value is None:
            continue
        if isinstance(default, dict):
            _check_types(value, default, path + ".")
        elif isinstance(default, bool):
            if not isinstance(value, bool):
                raise ConfigError(path, f"expected true or false, got {value!r}")
        elif isinstance(default, (int, float)) or default is None:
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ConfigError(path, f"expected a number, got {value!r}")
            if path in _POSITIVE_INTS and (value != int(value) or value <= 0):
                raise ConfigError(path, f"must be a positive integer, got {value!r}")
            if value < 0:
                raise ConfigError(path, f"must not be negative, got {value!r}")
        elif isinstance(default, str) and not isinstance(value, str):
            raise ConfigError(path, f"expected a string, got {value!r}")
        if path in _CHOICES and value not in _CHOICES[path]:
            raise ConfigError(path, f"{value!r} is not supported; choose one of {list(_CHOICES[path])}")


def data_config(cfg: dict) -> dict:
    """The ``data`` section without unset keys, as :func:`minidist.training.data.make_dataset` takes it.
    A text corpus reads windows of ``seq_len`` (default 32) characters; a synthetic task's
    sequence length follows from the task (``n_digits``), so it needs no ``seq_len``."""
    out = {k: v for k, v in cfg["data"].items() if v is not None}
    if out.get("dataset", DEFAULT_DATASET) not in TASKS:
        out.setdefault("seq_len", TEXT_SEQ_LEN)
    return out


def sequence_length(cfg: dict) -> tuple[int, str]:
    """The length T of the sequences the model will read, and the key that sets it."""
    d = data_config(cfg)
    name = d.get("dataset", DEFAULT_DATASET)
    if name not in TASKS and name not in available_corpora():
        raise ConfigError("data.dataset", f"{name!r} is neither a shipped corpus nor a synthetic task; choose one of "
                                          f"{', '.join(available_corpora() + list(TASKS))}")
    if name in TASKS:
        try:
            task = SyntheticTask(d["dataset"], n=d.get("n_digits", TASK_DIGITS))
        except ValueError as e:
            raise ConfigError("data.n_digits", str(e)) from None
        return task.seq_len, "data.n_digits"
    return d["seq_len"], "data.seq_len"
