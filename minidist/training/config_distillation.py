"""The ``distillation`` section of the config (run by :mod:`minidist.distill`): its defaults and checks, including a
teacher read from a checkpoint (:func:`check_teacher`, also called by minidist.distill).
"""
from __future__ import annotations

import copy

from ..defaults import DEFAULTS
from ..model import GPTConfig
from .data import make_dataset

from .config_schema import ConfigError, _merge, data_config


def check_distillation(cfg: dict, given, world_size: int) -> dict:
    """The ``distillation`` section with its defaults, checked (runs in minidist.distill).

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
    batch = cfg["train_micro_batch_size_per_gpu"] * student_replicas(cfg, world_size - k)
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
        _check_teacher_layout(cfg, d, world_size)
    return d


def student_world(cfg: dict, world_size: int) -> int:
    """The ranks the student's layout is laid on: the world less ``distillation.teacher_ranks``
    (the teacher's own ranks; 0 when it shares the students'), checked so that tensor ×
    pipeline divides them. Called before the world's layout (config.py): its errors then name
    the student ranks and the fix on ``teacher_ranks``."""
    d, par = cfg.get("distillation"), cfg["parallel"]
    k = d.get("teacher_ranks") if isinstance(d, dict) else None
    if not isinstance(k, int) or isinstance(k, bool) or not 0 < k < world_size:
        return world_size                          # none, or refused by check_distillation
    mp = par["tensor"] * par["pipeline"]
    if (world_size - k) % mp:
        raise ConfigError("distillation.teacher_ranks", f"{k} teacher rank(s) leave {world_size - k} student ranks "
                                                        f"in a world of {world_size}, which tensor × pipeline = {mp} "
                                                        f"does not divide; run on {k} + a multiple of {mp} ranks "
                                                        f"or change teacher_ranks")
    return world_size - k


def student_replicas(cfg: dict, students: int) -> int:
    """The student's data-parallel replicas on ``students`` ranks (each a tensor × pipeline group)."""
    par = cfg["parallel"]
    return max(students // (par["tensor"] * par["pipeline"] * par["context"]["size"]), 1)


def teacher_config(cfg: dict, n_students: int, teacher_ranks: int) -> dict:
    """The teacher's own training config: its model and steps, on the students' global batch.
    Co-located (``teacher_ranks`` 0) it trains in the student's layout; on its own k ranks it
    trains data parallel over them (no tensor or pipeline split, the student's ZeRO stage), each
    taking micro-batch × replicas / k sequences of the ``n_students`` student ranks' replicas."""
    d = cfg["distillation"]
    t = copy.deepcopy(cfg)
    t.update(model=dict(d["teacher"]["model"]), steps=d["teacher"]["steps"], distillation=None, train_batch_size=None)
    if teacher_ranks:
        t["train_micro_batch_size_per_gpu"] = \
            cfg["train_micro_batch_size_per_gpu"] * student_replicas(cfg, n_students) // teacher_ranks
        t["parallel"] = dict(copy.deepcopy(DEFAULTS["parallel"]), data_parallel=cfg["parallel"]["data_parallel"])
        t["activation_checkpointing"]["partition_activations"] = False       # it shards over tp ranks
    return t


def _check_teacher_layout(cfg: dict, d: dict, world_size: int) -> None:
    """The teacher trains in the student's layout (its tensor and pipeline split): its model
    must fit it too (heads over tp, blocks over the pipeline's chunks). Errors name
    ``distillation.teacher.model.KEY``."""
    from .config import load_config              # here: config.py calls this module
    k = d["teacher_ranks"]
    try:
        load_config(teacher_config(dict(cfg, distillation=d), world_size - k, k), k or world_size)
    except ConfigError as e:
        key = "distillation.teacher." + e.key if e.key.startswith("model.") else e.key
        why = str(e).split(": ", 1)[1].replace("model.", "distillation.teacher.model.")
        raise ConfigError(key, f"the teacher trains in the student's layout: {why}") from None


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
