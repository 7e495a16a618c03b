"""A distillation teacher loaded from a checkpoint (``distillation.teacher.load``): trained by
``python -m minidist.train --save`` on any layout, it gives the student the very losses of
the same teacher trained in the same run; it is frozen (parameters only); bad checkpoints
and mismatched teachers are refused on every rank, naming the key."""
import json
import os

import numpy as np
import pytest

from minidist.distill.runner import run
from minidist.train import main as train_main
from _distill import errors_on_every_rank

pytestmark = pytest.mark.distill

C = 16
STUDENT = {"block_size": 16, "n_layer": 2, "n_embd": C, "n_head": 2}
TEACHER = {"n_layer": 3}
TEACHER_STEPS = 3


def base(micro, steps, zero=0):
    return {"data": {"dataset": "sort", "n_digits": 4}, "train_micro_batch_size_per_gpu": micro,
            "model": dict(STUDENT), "steps": steps, "zero_optimization": {"stage": zero}}


def in_run(micro=4, zero=0, **distill):
    """The teacher trained first, in the same run."""
    return dict(base(micro, 3, zero), distillation={"teacher": {"model": TEACHER, "steps": TEACHER_STEPS}, **distill})


def loading(path, micro=4, zero=0, **distill):
    return dict(base(micro, 3, zero), distillation={"teacher": {"load": str(path)}, **distill})


def save_teacher(tmp_path, name, world=1, micro=4, zero=0, **model):
    """What the in-run teacher trains on (same data, seed, batch, optimizer), written by --save."""
    cfg = dict(base(micro, TEACHER_STEPS, zero), model={**STUDENT, **TEACHER, **model})
    path, out = tmp_path / f"{name}.json", tmp_path / name
    path.write_text(json.dumps(cfg))
    assert train_main(["--config", str(path), "--world-size", str(world), "--save", str(out), "--quiet"]) == 0
    return out


def losses(r):
    return np.array([[h["loss"], h["kl"], h["ce"], h["pkd"]] for h in r.student.history])


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("teachers")
    return {"one": save_teacher(tmp, "one"), "zero2": save_teacher(tmp, "zero2", world=2, micro=2, zero=2),
            "vocab": save_teacher(tmp, "vocab", vocab_size=20), "block": save_teacher(tmp, "block", block_size=32)}


def test_loaded_teacher_gives_the_in_run_teachers_losses_bit_for_bit(saved):
    ref, = run(in_run(patient="skip"))
    got, = run(loading(saved["one"], patient="skip"))
    assert np.array_equal(losses(got), losses(ref))
    for (name, p), (_, q) in zip(ref.teacher.model.named_parameters(), got.teacher.model.named_parameters()):
        assert np.array_equal(p.data, q.data), name
    t = got.section()["teacher"]
    assert t["loaded_from"].endswith("step_00000003") and t["steps"] == TEACHER_STEPS
    assert t["model"] == ref.section()["teacher"]["model"] and t["final"] == ref.section()["teacher"]["final"]
    assert t["train_loss"] == pytest.approx(ref.teacher_run.history[-1]["loss"], abs=0)


@pytest.mark.timeout(60)
def test_a_zero2_checkpoint_of_two_ranks_loads_the_same(saved):
    # the teacher trained with ZeRO-2 on 2 ranks, here in the run and there by --save: the student's losses agree
    ref = run(in_run(micro=2, zero=2, top_k=4), 2)
    got = run(loading(saved["zero2"], micro=2, zero=2, top_k=4), 2)
    assert np.array_equal(losses(got[0]), losses(ref[0])) and np.array_equal(losses(got[1]), losses(ref[1]))
    # and a one-rank run reads the same teacher out of the two ZeRO-2 shards
    one, = run(loading(saved["zero2"]))
    for (name, p), (_, q) in zip(ref[0].teacher.model.named_parameters(), one.teacher.model.named_parameters()):
        assert np.array_equal(p.data, q.data), name


def test_loaded_teacher_holds_parameters_only(saved):
    r, = run(loading(saved["one"]))
    t, psi_t = r.teacher, r.teacher.n_params
    assert psi_t == sum(int(np.prod(s)) for s in json.load(open(os.path.join(
        saved["one"], "step_00000003", "manifest.json")))["parameters"].values())
    assert t.memory() == {"parameters": 4 * psi_t, "gradients": 0, "optimizer_states": 0, "activations": 0,
                          "buffers": 0, "other": 0, "kv_cache": 0}
    assert t.holds_no_state()
    assert not any(n.startswith("teacher.") for c, _, n in r.device.memory.live() if c != "parameters")
    assert r.device.memory.current["optimizer_states"] == 8 * r.student.n_params      # AdamW: the student's only


def _corrupt(tmp_path, saved):
    bad = tmp_path / "corrupt"
    os.makedirs(bad / "step_00000003")
    for name in ("latest", "step_00000003/manifest.json", "step_00000003/rank_00000.npz"):
        data = bytearray(open(os.path.join(saved["one"], name), "rb").read())
        if name.endswith(".npz"):
            data[len(data) // 2] ^= 0xFF                                # one flipped byte
        (bad / name).write_bytes(bytes(data))
    return bad


@pytest.mark.timeout(60)
@pytest.mark.parametrize("case,key,words", [
    ("missing", "distillation.teacher.load", "does not exist; give the --save folder"),
    ("empty", "distillation.teacher.load", "no complete checkpoint"),
    ("corrupt", "distillation.teacher.load", "SHA-256"),
    ("vocab", "distillation.teacher.load", "vocabulary 20 differs from the student's 14"),
    ("block", "distillation.teacher.load", "block_size) 32 differs from the student's 16"),
    ("both", "distillation.teacher.model", "exactly one of teacher.model or teacher.load"),
])
def test_bad_teacher_checkpoint_fails_clearly_on_every_rank(tmp_path, saved, case, key, words):
    os.makedirs(tmp_path / "empty")
    path = {"missing": tmp_path / "nope", "empty": tmp_path / "empty", "corrupt": _corrupt(tmp_path, saved)}.get(
        case, saved.get(case, saved["one"]))
    cfg = loading(path, micro=2)
    if case == "both":
        cfg["distillation"]["teacher"]["model"] = TEACHER

    out = errors_on_every_rank(cfg, 2)
    assert [k for k, _ in out] == [key] * 2                              # every rank, same error, no hang
    assert words in out[0][1] and out[0][1] == out[1][1]


@pytest.mark.timeout(60)
def test_train_cli_distils_from_a_saved_teacher(tmp_path, saved, capsys):
    cfg = loading(saved["one"], micro=2, top_k=4, teacher_ranks=1)
    path, rep = tmp_path / "c.json", tmp_path / "r.json"
    path.write_text(json.dumps(cfg))
    assert train_main(["--config", str(path), "--world-size", "3", "--report", str(rep), "--quiet"]) == 0
    r = json.loads(rep.read_text())
    t = r["distillation"]["teacher"]
    assert t["loaded_from"] == os.path.join(str(saved["one"]), "step_00000003") and t["steps"] == TEACHER_STEPS
    assert t["model"]["n_layer"] == 3 and t["memory"]["parameters"] == 4 * t["n_params"]
    assert t["memory"]["gradients"] == t["memory"]["optimizer_states"] == 0
    # the same job with the teacher trained in it: the same student losses
    ref = run(dict(in_run(micro=2, top_k=4, teacher_ranks=1)), 3)
    assert [h["loss"] for h in r["steps"]] == [h["loss"] for h in ref[1].student.history]
    assert "teacher -> students" in capsys.readouterr().out
