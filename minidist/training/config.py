"""The DeepSpeed-style JSON configuration: defaults, validation, clear errors.

Every key has a default, so ``{}`` is a valid config. A key minidist does not know, or a
value of the wrong type or range, raises :class:`ConfigError` naming the full key path
(``zero_optimization.stage``) and how to fix it — before any rank starts training, so
every rank fails the same way and none hangs.
"""
from __future__ import annotations

import copy
import difflib
import json
import math

from ..defaults import (DATA_PARALLEL, DEFAULT_DATASET, DEFAULTS, PARAMETER_SERVER, TASK_DIGITS, TEXT_SEQ_LEN,
                        normalize_schedule)
from ..device import get_spec
from ..model import GPTConfig
from ..optim import OPTIMIZERS
from ..parallel.tensor.build import config_problem as tensor_config_problem
from ..parallel.pipeline import config_problem as pipeline_config_problem
from ..precision.loss_scaler import from_config
from .data import TASKS, SyntheticTask, available_corpora, make_dataset

# keys whose value is free-form (checked by the component that uses it)
_FREE = {"optimizer.params", "device", "distillation"}

_CHOICES = {
    "dtype": ("float32", "float64"),
    "parallel.data_parallel": DATA_PARALLEL,
    "zero_optimization.stage": (0, 1, 2, 3),
    "zero_optimization.offload_optimizer.device": ("none", "cpu"),
}

# keys other frameworks have that minidist spells differently: what to write instead
_REPLACED = {"parallel.micro_batches": "the pipeline's micro-batches per step are gradient_accumulation_steps "
                                      "(SPEC §9, as in DeepSpeed); set gradient_accumulation_steps instead"}

_POSITIVE_INTS = {"train_micro_batch_size_per_gpu", "gradient_accumulation_steps", "steps",
                  "eval_iters", "zero_optimization.reduce_bucket_size",
                  "zero_optimization.allgather_bucket_size", "zero_optimization.stage3_max_live_parameters",
                  "fp16.loss_scale_window", "fp16.hysteresis", "parallel.tensor", "parallel.pipeline",
                  "parallel.virtual_stages", "parallel.make_vocab_size_divisible_by", "data.seq_len"}


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
    key is named here and not by a traceback far away; then whole numbers and ranges."""
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
        tree = cfg[section] if section else cfg
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
                 "dampening": (lambda v: 0 <= v <= 1, "in [0, 1]")}


def _check_optimizer_params(cfg: dict) -> None:
    """``optimizer.params`` against the optimizer's own hyper-parameters (PyTorch's names)."""
    opt, key = cfg["optimizer"], "optimizer.params"
    params, cls = opt["params"], OPTIMIZERS[opt["type"].lower()]
    if not isinstance(params, dict):
        raise ConfigError(key, f"expected an object such as {{\"lr\": 0.001}}, got {params!r}")
    for name, value in params.items():
        path = f"{key}.{name}"
        if name not in cls.defaults:
            close = difflib.get_close_matches(name, list(cls.defaults), n=1)
            hint = f"did you mean '{close[0]}'? " if close else ""
            raise ConfigError(path, f"{opt['type']} has no hyper-parameter {name!r}; {hint}known: {sorted(cls.defaults)}")
        if name == "betas":
            ok = (isinstance(value, list) and len(value) == 2
                  and all(isinstance(b, (int, float)) and not isinstance(b, bool) and 0 <= b < 1 for b in value))
            if not ok:
                raise ConfigError(path, f"expected two numbers in [0, 1) such as [0.9, 0.999], got {value!r}")
        elif isinstance(cls.defaults[name], bool):
            if not isinstance(value, bool):
                raise ConfigError(path, f"expected true or false, got {value!r}")
        elif isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(path, f"expected a number, got {value!r}")
        elif name in _HYPER_RANGES and not _HYPER_RANGES[name][0](value):
            raise ConfigError(path, f"must be {_HYPER_RANGES[name][1]}, got {value!r}")
    merged = {**cls.defaults, **params}
    if merged.get("nesterov") and (merged["momentum"] <= 0 or merged["dampening"] != 0):
        raise ConfigError(f"{key}.nesterov", "Nesterov momentum needs momentum > 0 and dampening 0 (as in PyTorch)")


def _check_consistency(cfg: dict, world_size: int) -> None:
    if not isinstance(world_size, int) or world_size < 1:
        raise ConfigError("world_size", f"must be a positive integer, got {world_size!r}")
    par = cfg["parallel"]
    mp = par["tensor"] * par["pipeline"]
    problem = tensor_config_problem(cfg, world_size, sequence_length(cfg)[0])   # tp > world first
    if problem:
        raise ConfigError(*problem)
    if world_size % mp:
        raise ConfigError("parallel", f"world size {world_size} is not divisible by tensor × pipeline = {mp}; "
                                      f"use a world size that is a multiple of {mp}")
    problem = pipeline_config_problem(cfg)      # schedule, micro-batches it can run, layers per chunk
    if problem:
        raise ConfigError(*problem)
    dp = world_size // mp
    m = cfg["model"]
    if m["n_embd"] % m["n_head"]:
        raise ConfigError("model.n_head", f"n_embd {m['n_embd']} is not divisible by n_head {m['n_head']}")
    seq, key = sequence_length(cfg)
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
    if cfg["fp16"]["enabled"] and cfg["bf16"]["enabled"]:
        raise ConfigError("fp16.enabled", "fp16 and bf16 cannot both be enabled; pick one")
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
    if zero["offload_optimizer"]["device"] == "cpu" and zero["stage"] == 0:
        raise ConfigError("zero_optimization.offload_optimizer.device",
                          "offload needs ZeRO stage 1, 2 or 3 (DeepSpeed's ZeRO-Offload); set zero_optimization.stage")
    pre = zero["stage3_prefetch_bucket_size"]
    if pre != int(pre):
        raise ConfigError("zero_optimization.stage3_prefetch_bucket_size",
                          f"must be a whole number of elements (0 disables prefetch), got {pre!r}")
    if zero["stage"] > 0 and par["data_parallel"] == PARAMETER_SERVER:
        raise ConfigError("parallel.data_parallel", "the parameter server keeps whole optimizer states on "
                                                   "rank 0; ZeRO needs data_parallel 'ddp' (or stage 0)")
    if zero["stage"] > 0 and cfg["optimizer"]["type"].lower() == "lamb":
        raise ConfigError("optimizer.type", "LAMB needs whole-tensor norms and cannot update a ZeRO shard; "
                                            "use Adam, AdamW or SGD with zero_optimization.stage > 0")
    if cfg["distillation"] is not None:
        cfg["distillation"] = _check_distillation(cfg, cfg["distillation"], world_size)
    if cfg["optimizer"]["type"].lower() not in ("sgd", "adam", "adamw", "lamb"):
        raise ConfigError("optimizer.type", f"{cfg['optimizer']['type']!r} is not supported; "
                                            f"choose SGD, Adam, AdamW or LAMB")


def _check_distillation(cfg: dict, given, world_size: int) -> dict:
    """The ``distillation`` section with its defaults, checked (SPEC §11; runs in minidist.distill).

    ``teacher.model`` starts from the student's ``model`` (only what differs is given) and is
    trained for ``teacher.steps`` (default: ``steps``) before the student; or ``teacher.load:
    DIR`` (a ``--save`` folder): the manifest's model, checked by :func:`check_teacher` once
    minidist.distill has read it."""
    if not isinstance(given, dict):
        raise ConfigError("distillation", f"expected an object such as {{'teacher': {{'model': {{'n_layer': 4}}}}}} "
                                          f"or null, got {given!r}")
    student = cfg["model"]
    d = _merge({"teacher": {"model": student, "steps": cfg["steps"], "load": None}, "temperature": 2.0,
                "alpha": 0.5, "patient": None, "teacher_ranks": 0, "top_k": None}, given, "distillation.")
    t = d["teacher"]
    if t["load"] is not None:
        both = sorted(set(given["teacher"]) & {"model", "steps"})
        if both:
            raise ConfigError(f"distillation.teacher.{both[0]}", "a teacher loaded from a checkpoint (teacher.load) "
                                                                 "keeps the model and steps it was saved with; give "
                                                                 f"exactly one of teacher.model or teacher.load: "
                                                                 f"remove teacher.{' and teacher.'.join(both)}")
        if not isinstance(t["load"], str) or not t["load"]:
            raise ConfigError("distillation.teacher.load", f"must be the folder a run wrote with --save DIR (a "
                                                           f"string), got {t['load']!r}")
    for key, value, ok, want in (
            ("teacher.steps", t["steps"], lambda v: v == int(v) and v > 0, "a positive integer"),
            ("temperature", d["temperature"], lambda v: v > 0, "a number > 0 (Hinton et al. use 1-20)"),
            ("alpha", d["alpha"], lambda v: 0 <= v <= 1, "a number in [0, 1] (the weight of the soft loss)"),
            ("teacher_ranks", d["teacher_ranks"], lambda v: v == int(v) and v >= 0, "an integer >= 0")):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not ok(value):
            raise ConfigError(f"distillation.{key}", f"must be {want}, got {value!r}")
    if t["load"] is not None:
        t["model"] = t["steps"] = None          # the checkpoint's: filled in by minidist.distill
    vocab = _student_vocab(cfg)
    k = d["teacher_ranks"]
    if k and k >= world_size:
        raise ConfigError("distillation.teacher_ranks", f"{k} teacher rank(s) leave no student rank in a world of "
                                                        f"{world_size}; run on more than {k} ranks or lower teacher_ranks")
    batch = cfg["train_micro_batch_size_per_gpu"] * (world_size - k)
    if k and batch % k:
        raise ConfigError("distillation.teacher_ranks", f"the teacher trains on the students' global batch of {batch} "
                                                        f"sequences, which {k} teacher ranks cannot split evenly; "
                                                        f"choose teacher_ranks dividing {batch}")
    if d["top_k"] is not None:
        if isinstance(d["top_k"], bool) or not isinstance(d["top_k"], int) or not 1 <= d["top_k"] < vocab:
            raise ConfigError("distillation.top_k", f"must be an integer in [1, {vocab - 1}] (below the vocabulary "
                                                    f"of {vocab}), got {d['top_k']!r}; remove it to send all logits")
    if d["patient"] is not None:
        p = d["patient"] = _merge({"mapping": "skip", "beta": 1.0}, d["patient"] if isinstance(d["patient"], dict)
                                  else {"mapping": d["patient"]}, "distillation.patient.")
        if p["mapping"] not in ("skip", "last"):
            raise ConfigError("distillation.patient.mapping", f"{p['mapping']!r} is not a PKD mapping; choose "
                                                              f"'skip' or 'last' (Sun et al. 2019)")
        if isinstance(p["beta"], bool) or not isinstance(p["beta"], (int, float)) or p["beta"] < 0:
            raise ConfigError("distillation.patient.beta", f"must be a number >= 0, got {p['beta']!r}")
        if student["n_layer"] < 2:
            raise ConfigError("model.n_layer", "patient KD matches the student's first n_layer − 1 blocks; give the "
                                               "student at least 2 blocks or remove distillation.patient")
    if t["load"] is None:
        check_teacher(cfg, d)
    return d


def _student_vocab(cfg: dict) -> int:
    """The student's vocabulary: ``model.vocab_size``, or the dataset's when it is None."""
    return cfg["model"]["vocab_size"] or make_dataset(data_config(cfg)).vocab_size


def check_teacher(cfg: dict, d: dict) -> None:
    """``d["teacher"]["model"]`` against the student's: same vocabulary and block size, a valid
    GPT, for Patient KD enough blocks and the same width. Errors name ``teacher.model.KEY``,
    or ``teacher.load`` for a teacher whose model came from a checkpoint's manifest."""
    student, t = cfg["model"], d["teacher"]
    loaded = t["load"] is not None
    where = lambda key="": "distillation.teacher." + ("load" if loaded else "model" + (key and "." + key))   # noqa: E731
    vocab = _student_vocab(cfg)
    for key, what, mine in (("vocab_size", "vocabulary", vocab), ("block_size", "sequence length (block_size)",
                                                                  student["block_size"])):
        if t["model"][key] not in (None, mine) if key == "vocab_size" else t["model"][key] != mine:
            fix = f"load a teacher saved with model.{key} = {mine}" if loaded else f"remove the key or set it to {mine}"
            raise ConfigError(where(key), f"the teacher's {what} {t['model'][key]} differs from the student's {mine}: "
                                          f"KD compares their outputs token by token; {fix}")
    try:
        GPTConfig(**{**t["model"], "vocab_size": vocab})
    except ValueError as e:
        raise ConfigError(where(), str(e).replace("model.", "teacher.model.")) from None
    p = d["patient"]
    if p is None:
        return
    ls, lt = student["n_layer"], t["model"]["n_layer"]
    if lt < ls:
        fix = f"load a teacher of {ls} blocks or more" if loaded else f"raise it to {ls} or more"
        raise ConfigError(where("n_layer"), f"PKD-{p['mapping'].capitalize()} maps the student's {ls - 1} inner blocks "
                                            f"onto distinct teacher blocks below the teacher's last, which needs at "
                                            f"least {ls} teacher layers; the teacher has {lt}: {fix}")
    if t["model"]["n_embd"] != student["n_embd"]:
        fix = "load a teacher of that width" if loaded else "set teacher.model.n_embd to it"
        raise ConfigError(where("n_embd"), f"patient KD compares hidden states, so the teacher's n_embd "
                                           f"{t['model']['n_embd']} must equal the student's {student['n_embd']} (no "
                                           f"learned projection is provided): {fix}")
