"""Distillation with checkpoints (``--save DIR`` / ``--load DIR``, minidist.distill.resume): a run
interrupted in the teacher phase or in the student phase and resumed equals the run that never
stopped bit for bit (losses and their parts, final weights, held-out figures), one rank, data
parallel with ZeRO-3, a pipeline and teacher ranks streaming; the resume rules of training apply (trajectory
keys refused, --load-weights-only, the nothing-to-train note, a manifest edited by hand)."""
import json
import os
import shutil

import numpy as np
import pytest

from minidist.distill.resume import point_name, read_distill_checkpoint
from minidist.distill.runner import run
from minidist.train import main as train_main

pytestmark = pytest.mark.distill


def config(micro=4, steps=4, zero=0, **distill):
    return {"data": {"dataset": "sort", "n_digits": 4}, "train_micro_batch_size_per_gpu": micro, "steps": steps,
            "dtype": "float64", "model": {"block_size": 16, "n_layer": 2, "n_embd": 16, "n_head": 2},
            "zero_optimization": {"stage": zero}, "eval_iters": 1,
            "distillation": {"teacher": {"model": {"n_layer": 3}, "steps": 3}, **distill}}


def interrupted_at(saved, folder, point):
    """A copy of a run saved at every step whose last complete save point is ``point``: what a
    run killed right after that save leaves behind."""
    shutil.copytree(saved, folder)
    (folder / "latest").write_text(point + "\n")
    return folder


def assert_same_run(a, b):
    """Two students trained the same, bit for bit: every step's loss and parts, the weights,
    the held-out figures."""
    keys = ("step", "loss", "kl", "ce", "pkd")
    assert [[h[k] for k in keys] for h in a.student.history] == [[h[k] for k in keys] for h in b.student.history]
    for (name, p), q in zip(a.student.model.named_parameters(), b.student.model.parameters()):
        assert np.array_equal(p.data, q.data), name
    assert a.student.final == b.student.final


@pytest.fixture(scope="module")
def one_rank(tmp_path_factory):
    """The uninterrupted run (Patient KD on), a save point after every step of both phases."""
    folder = tmp_path_factory.mktemp("distill") / "every_step"
    cfg = config(patient="skip")
    r, = run(cfg, save=folder, save_interval=1)
    return cfg, folder, r


@pytest.mark.timeout(60)
@pytest.mark.parametrize("point", [point_name("teacher", 2), point_name("teacher", 3), point_name("student", 2)])
def test_resume_in_either_phase_is_the_uninterrupted_run_bit_for_bit(tmp_path, one_rank, point):
    cfg, saved, full = one_rank
    folder = interrupted_at(saved, tmp_path / "run", point)
    again, = run(cfg, load=folder, save=tmp_path / "elsewhere")
    assert_same_run(again, full)
    # the resumed run's own checkpoint resumes alone: its teacher was copied beside the student
    ckpt = read_distill_checkpoint(tmp_path / "elsewhere")
    assert (ckpt.phase, ckpt.step, ckpt.manifest["teacher"]) == ("student", 4, os.path.join("teacher", "step_00000003"))
    trained = read_distill_checkpoint(saved).teacher.universal
    for name, u in ckpt.teacher.universal.items():
        assert np.array_equal(u["param"], trained[name]["param"]), name


def test_a_save_point_names_its_phase_step_and_both_models_with_a_checksum(one_rank):
    _, saved, full = one_rank
    assert sorted(os.listdir(saved)) == sorted(["latest", "teacher", "student"] +
                                               [point_name("teacher", s) for s in (1, 2, 3)] +
                                               [point_name("student", s) for s in (1, 2, 3, 4)])
    ckpt = read_distill_checkpoint(saved)
    m = ckpt.manifest
    assert (m["phase"], m["step"], m["student"]) == ("student", 4, os.path.join("student", "step_00000004"))
    assert ckpt.teacher.step == 3 and ckpt.student.step == 4 and len(m["manifest_sha256"]) == 64
    # the student's checkpoint holds its optimizer state and its history with the loss parts
    assert ckpt.student.metas[0]["history"][-1]["kl"] == full.student.history[-1]["kl"]
    assert {"param", "exp_avg", "exp_avg_sq", "step"} <= set(ckpt.student.universal["transformer.wte.weight"])
    teacher_only = read_distill_checkpoint(saved / point_name("teacher", 2))
    assert teacher_only.phase == "teacher" and teacher_only.student is None


@pytest.mark.timeout(60)
@pytest.mark.parametrize("world,layout,extra,points", [
    (3, {}, {"teacher_ranks": 1, "top_k": 4, "patient": "last"}, (point_name("teacher", 2), point_name("student", 1))),
    (2, {"zero_optimization": {"stage": 3}}, {"patient": "skip"}, (point_name("student", 1),)),
    (2, {"parallel": {"pipeline": 2}, "gradient_accumulation_steps": 2},
     {"teacher": {"model": {"n_layer": 4}, "steps": 2}}, (point_name("teacher", 1), point_name("student", 1)))],
    ids=["teacher-ranks", "zero3", "pipeline"])
def test_teacher_ranks_zero3_and_pipeline_resume_bit_for_bit(tmp_path, world, layout, extra, points):
    cfg = {**config(micro=2, **extra), **layout}
    full = run(cfg, world, save=tmp_path / "all", save_interval=1)
    for point in points:
        folder = interrupted_at(tmp_path / "all", tmp_path / point, point)
        again = run(cfg, world, load=folder)
        for a, b in zip(again, full):
            if b.student is not None:
                assert_same_run(a, b)
    if "zero_optimization" in layout:           # resharded: the ZeRO-3 save point resumed on one rank
        one, = run(config(micro=4, **extra), load=folder)
        got, want = ([h["loss"] for h in r.student.history] for r in (one, full[0]))
        np.testing.assert_allclose(got, want, rtol=1e-12)


def _cli(tmp_path, cfg, *flags, name="c.json"):
    path = tmp_path / name
    path.write_text(json.dumps(cfg))
    return train_main(["--config", str(path), "--quiet", *map(str, flags)])


@pytest.mark.timeout(60)
def test_cli_resume_rules(tmp_path, one_rank, capsys):
    cfg, saved, _ = one_rank
    # the run already reached its steps: a note, nothing trained
    assert _cli(tmp_path, cfg, "--load", saved) == 0
    assert "nothing to train" in capsys.readouterr().err
    # a key that changes the trajectory is refused, naming it and the switch
    for key, change in (("seed", {"seed": 7}), ("distillation.temperature",
                                                {"distillation": {**cfg["distillation"], "temperature": 3.0}})):
        assert _cli(tmp_path, {**cfg, **change, "steps": 5}, "--load", saved) == 2
        err = capsys.readouterr().err
        assert f"'{key}'" in err and "--load-weights-only" in err, err
    # ... unless the run starts anew from the weights: step 0, the student's saved weights, the teacher frozen
    report = tmp_path / "r.json"
    assert _cli(tmp_path, {**cfg, "seed": 7}, "--load", saved, "--load-weights-only", "--report", report) == 0
    rep = json.loads(report.read_text())
    assert [h["step"] for h in rep["steps"]] == [0, 1, 2, 3]
    assert rep["distillation"]["teacher"]["loaded_from"].endswith("step_00000003")
    # a save point edited by hand (step 4 → 3) no longer matches its checksum
    edited = interrupted_at(saved, tmp_path / "edited", point_name("student", 4))
    m = json.loads((edited / point_name("student", 4)).read_text())
    (edited / point_name("student", 4)).write_text(json.dumps(dict(m, step=3)))
    assert _cli(tmp_path, cfg, "--load", edited) == 2
    assert "SHA-256" in capsys.readouterr().err


@pytest.mark.timeout(60)
def test_cli_refuses_a_checkpoint_of_the_other_kind(tmp_path, one_rank, capsys):
    cfg, saved, _ = one_rank
    plain = {k: v for k, v in cfg.items() if k != "distillation"}
    assert _cli(tmp_path, plain, "--load", saved) == 2
    assert "is a distillation checkpoint" in capsys.readouterr().err
    assert _cli(tmp_path, {**plain, "steps": 1}, "--save", tmp_path / "plain") == 0
    assert _cli(tmp_path, cfg, "--load", tmp_path / "plain") == 2
    assert "distillation.teacher.load" in capsys.readouterr().err
    # the teacher's folder of a distillation checkpoint is an ordinary one: a teacher to distil from
    loading = {**cfg, "distillation": {"teacher": {"load": str(saved / "teacher")}, "patient": "skip"}}
    assert _cli(tmp_path, loading, "--save", tmp_path / "from_teacher") == 0
    ckpt = read_distill_checkpoint(tmp_path / "from_teacher")
    assert ckpt.manifest["teacher"] is None and ckpt.step == 4
