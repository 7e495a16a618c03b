"""Checkpoints of a distillation run: ``--save DIR`` writes them, ``--load DIR`` resumes.

A distillation run has two phases (:mod:`.runner`): the teacher trains, then the student
distils from it, frozen. A save point records which phase the run is in and after how many
of that phase's steps, and where each model's ordinary checkpoint (:mod:`minidist.checkpoint`:
weights, optimizer states, loss scaler, dropout generators, history, data position) lies::

    DIR/
      latest                   "student_00000002.json" — the last complete save point, written last
      teacher_00000003.json    a save point: phase, step, the two checkpoints, the config, its SHA-256
      student_00000002.json
      teacher/step_00000003/   the teacher's Trainer, as ``python -m minidist.train --save`` writes it
      student/step_00000002/   the student's (its group of ranks: all, or the student ranks)

``DIR/teacher`` is an ordinary checkpoint folder: ``distillation.teacher.load: DIR/teacher``
distils another student from its last step. A point of the teacher phase names no student;
a point of the student phase names the teacher's last step (or none when the teacher came
from ``distillation.teacher.load``, which the config still names).

Resuming (:class:`DistillCheckpoint`, checked by :func:`check_resume` before any rank
starts): in the teacher phase the teacher's Trainer continues from its step, then the student
trains from step 0; in the student phase the teacher is read frozen from its last step and
the student continues. Both equal the run that was never interrupted, bit for bit, because
each model's checkpoint resumes its Trainer bit for bit and the teacher's frozen weights are
its trained ones. ``--load-weights-only`` starts a new run (step 0, fresh optimizer) from the
weights of the phase saved: the teacher's to train on, or — in the student phase — the
trained teacher, frozen, and the student's weights to distil from.
"""
from __future__ import annotations

import dataclasses
import os
import shutil

from ..checkpoint import CheckpointError, check_compatible, read_checkpoint, save_checkpoint
from ..checkpoint.format import (LATEST, manifest_checksum, read_json, step_dirname, write_atomic,
                                 write_json_atomic)
from ..checkpoint.load import MODEL_KEYS, _get
from .teacher import teacher_config

FORMAT = "minidist-distillation-checkpoint"
FORMAT_VERSION = 1
PHASES = ("teacher", "student")
# what decides the student's trajectory beyond the ordinary trajectory keys
DISTILL_KEYS = ("distillation.temperature", "distillation.alpha", "distillation.patient", "distillation.top_k",
                "distillation.teacher.model", "distillation.teacher.steps", "distillation.teacher.load")
SWITCH = "; to start a new run from its weights only, add --load-weights-only"


def point_name(phase: str, step: int) -> str:
    """The manifest file of the save point after ``step`` steps of ``phase``."""
    return f"{phase}_{int(step):08d}.json"


def is_distillation_checkpoint(path: str) -> bool:
    """True when ``path`` is a distillation ``--save`` folder (its ``latest`` names a save point)."""
    latest = os.path.join(str(path), LATEST)
    if not os.path.isfile(latest):
        return False
    with open(latest) as f:
        return f.read().strip().endswith(".json")


@dataclasses.dataclass
class DistillCheckpoint:
    """A save point read and verified: its manifest and the two models' checkpoints
    (:class:`~minidist.checkpoint.Checkpoint`, None where the point names none)."""

    path: str
    manifest: dict
    teacher: object
    student: object

    phase = property(lambda self: self.manifest["phase"])
    step = property(lambda self: int(self.manifest["step"]))


def read_distill_checkpoint(path: str) -> DistillCheckpoint:
    """The save point ``path`` names (a ``--save`` folder: its ``latest``; or a point's
    ``.json``), its SHA-256 and both models' checkpoints verified."""
    path = str(path)
    if os.path.isdir(path):
        if not is_distillation_checkpoint(path):
            raise CheckpointError(path, "is not a distillation checkpoint (no 'latest' naming a save point): give "
                                        "the --save folder of a distillation run; to distil from a teacher saved by "
                                        "an ordinary run, set distillation.teacher.load to it instead of --load")
        with open(os.path.join(path, LATEST)) as f:
            path = os.path.join(path, f.read().strip())
    manifest = read_json(path, "is missing: this save did not complete; load an earlier point")
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise CheckpointError(path, f"is not a distillation save point (no \"format\": \"{FORMAT}\")")
    if manifest.get("format_version") != FORMAT_VERSION or manifest.get("phase") not in PHASES:
        raise CheckpointError(path, f"has format version {manifest.get('format_version')!r} and phase "
                                    f"{manifest.get('phase')!r}; this minidist reads version {FORMAT_VERSION}")
    if manifest.get("manifest_sha256") != manifest_checksum(manifest):
        raise CheckpointError(path, "does not match its own SHA-256 (manifest_sha256): it was edited or damaged "
                                    "after the save; load an intact checkpoint")
    root = os.path.dirname(os.path.abspath(path))
    models = [read_checkpoint(os.path.join(root, manifest[k])) if manifest[k] else None for k in PHASES]
    ckpt = DistillCheckpoint(path, manifest, *models)
    held = ckpt.teacher if ckpt.phase == "teacher" else ckpt.student
    if held is None or held.step != ckpt.step:
        raise CheckpointError(path, f"names a {ckpt.phase} checkpoint at step {held and held.step}, not at its "
                                    f"step {ckpt.step}; the file is damaged")
    return ckpt


def check_resume(ckpt: DistillCheckpoint, cfg: dict, world_size: int, weights_only: bool = False) -> None:
    """Refuse, before any rank starts, a save point this config cannot continue: the models
    always; to resume, the phase's trajectory (:func:`~minidist.checkpoint.check_compatible`)
    and — in the student phase — the distillation keys (temperature, alpha, Patient KD,
    top-K, the teacher), each error naming the key and the way out."""
    saved, d = ckpt.manifest["config"], cfg["distillation"]
    k = d["teacher_ranks"]
    teachers, students = (k or world_size), world_size - k
    for key in MODEL_KEYS + ("distillation.teacher.load", "distillation.teacher.model"):
        if _get(saved, key) != _get(cfg, key):
            raise CheckpointError(ckpt.path, f"was saved with config key '{key}' = {_get(saved, key)!r}, but this "
                                             f"run has {_get(cfg, key)!r}; use the saved value (the models must "
                                             f"match to load their weights)")
    if ckpt.phase == "teacher":
        steps = d["teacher"]["steps"]
        if not weights_only and ckpt.step > steps:
            raise CheckpointError(ckpt.path, f"is at teacher step {ckpt.step}, past this run's distillation.teacher."
                                             f"steps = {steps}; raise distillation.teacher.steps to continue")
        check_compatible(ckpt.teacher, teacher_config(cfg, students, k), teachers, weights_only=weights_only)
        return
    for key in () if weights_only else DISTILL_KEYS:
        if _get(saved, key) != _get(cfg, key):
            raise CheckpointError(ckpt.path, f"was saved with config key '{key}' = {_get(saved, key)!r}, but this "
                                             f"run has {_get(cfg, key)!r}; use the saved value to resume" + SWITCH)
    check_compatible(ckpt.student, dict(cfg, distillation=None), students, weights_only=weights_only)


def nothing_to_train(ckpt: DistillCheckpoint, cfg: dict) -> str | None:
    """The note for a save point whose student already reached ``steps`` (None otherwise)."""
    if ckpt.phase == "student" and ckpt.step == cfg["steps"]:
        return (f"note: {ckpt.path} is at student step {ckpt.step} = this run's steps: nothing to train; "
                f"evaluating it (raise 'steps' to train on)")
    return None


class Saver:
    """``--save root --save-interval interval`` for both phases: each model's checkpoint (a
    collective of its group), then — by the group's rank 0 — the save point naming it, then
    ``latest``. ``cfg``: the run's merged config (recorded, compared when resuming)."""

    def __init__(self, root: str, interval: int, cfg: dict, world_size: int, teacher_steps: int | None):
        self.root, self.interval, self.cfg, self.world_size = root, interval, cfg, world_size
        # the teacher's last checkpoint, which the student's points name (None: distillation.teacher.load)
        self.teacher_dir = None if teacher_steps is None else os.path.join("teacher", step_dirname(teacher_steps))

    def _due(self, done: int, steps: int) -> bool:
        return bool(self.interval and done % self.interval == 0) or done == steps

    def _point(self, phase: str, step: int, teacher, student) -> None:
        manifest = {"format": FORMAT, "format_version": FORMAT_VERSION, "phase": phase, "step": int(step),
                    "teacher": teacher, "student": student, "world_size": self.world_size, "config": self.cfg}
        manifest["manifest_sha256"] = manifest_checksum(manifest)
        name = point_name(phase, step)
        write_json_atomic(os.path.join(self.root, name), manifest)
        write_atomic(os.path.join(self.root, LATEST), (name + "\n").encode())     # last: the commit point

    def teacher(self, trainer, step: int) -> None:
        """``on_step`` of the teacher's Trainer."""
        done, steps = step + 1, trainer.cfg["steps"]
        if not self._due(done, steps):
            return
        save_checkpoint(trainer, os.path.join(self.root, "teacher"), done)
        if trainer.rank == 0:
            self._point("teacher", done, os.path.join("teacher", step_dirname(done)), None)

    def student(self, trainer, step: int) -> None:
        """``on_step`` of the student's Trainer."""
        done = step + 1
        if not self._due(done, trainer.cfg["steps"]):
            return
        save_checkpoint(trainer, os.path.join(self.root, "student"), done)
        if trainer.rank == 0:
            self._point("student", done, self.teacher_dir, os.path.join("student", step_dirname(done)))

    def keep_teacher(self, ckpt, rank: int) -> None:
        """A run resumed in the student phase saving elsewhere: the teacher's last checkpoint
        is copied beside the student's (by world rank 0), so the new folder resumes alone."""
        if ckpt is None:
            return
        step = step_dirname(ckpt.step)
        self.teacher_dir = os.path.join("teacher", step)
        target = os.path.join(self.root, self.teacher_dir)
        if rank == 0 and not os.path.exists(target):
            shutil.copytree(ckpt.step_dir, target)
            write_atomic(os.path.join(self.root, "teacher", LATEST), (step + "\n").encode())
