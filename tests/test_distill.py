"""Distillation runs: the frozen teacher's memory, teacher ranks streaming to student ranks
(same losses as one process, bytes by the formula), bad input on every rank."""
import json

import numpy as np
import pytest

from minidist.distill.runner import run
from minidist.train import main as train_main
from minidist.training.config import ConfigError
from minidist.training.trainer import Trainer
from _distill import errors_on_every_rank

pytestmark = pytest.mark.distill

SEQ, VOCAB, C = 9, 14, 16            # the sort task with 4 digits: 9 input tokens, 14 symbols


def config(micro=4, steps=4, **distill):
    return {"data": {"dataset": "sort", "n_digits": 4}, "train_micro_batch_size_per_gpu": micro,
            "model": {"block_size": 16, "n_layer": 2, "n_embd": C, "n_head": 2}, "steps": steps,
            "distillation": {"teacher": {"model": {"n_layer": 3}, "steps": 3}, **distill}}


def losses(r):
    return np.array([[h["loss"], h["kl"], h["ce"], h["pkd"]] for h in r.student.history])


def test_frozen_teacher_holds_parameters_only_and_student_memory_is_apart():
    r, = run(config())
    t = r.teacher
    psi_t, psi_s = t.n_params, r.student.n_params
    assert t.memory() == {"parameters": 4 * psi_t, "gradients": 0, "optimizer_states": 0, "activations": 0,
                          "buffers": 0, "other": 0, "kv_cache": 0}
    assert t.holds_no_state()
    # the student's model states (AdamW, fp32: 4 + 4 + 8 bytes per parameter), the teacher's taken out
    ms = r.section()["student"]["model_states"]
    assert (ms["parameters"], ms["gradients"], ms["optimizer_states"]) == (4 * psi_s, 4 * psi_s, 8 * psi_s)
    # the rank itself holds both: its parameters category is teacher + student
    assert r.student.strategy.model_states["parameters"] == 4 * (psi_s + psi_t)
    # the teacher's optimizer states stayed on the device it trained on; the rank holds the student's only
    assert r.teacher_run.device.memory.current["optimizer_states"] == 8 * psi_t
    assert r.device.memory.current["optimizer_states"] == 8 * psi_s
    assert not any(n.startswith("teacher.") for c, _, n in r.device.memory.live() if c != "parameters")


def test_bf16_teacher_is_two_bytes_per_parameter_and_sends_two_byte_values():
    cfg = config(micro=2, steps=2, teacher_ranks=1)
    cfg["bf16"] = {"enabled": True}
    ranks = run(cfg, 2)
    t = ranks[0].teacher
    assert t.memory()["parameters"] == 2 * t.n_params and t.memory()["gradients"] == 0
    assert ranks[0].section()["stream"]["bytes_sent"] == 2 * 2 * SEQ * VOCAB * 2     # steps × b·s·V × 2 B


@pytest.mark.timeout(60)
@pytest.mark.parametrize("extra", [{}, {"top_k": 3, "patient": {"mapping": "skip", "beta": 0.5}},
                                   {"patient": "last", "temperature": 4.0, "alpha": 0.9}])
def test_teacher_ranks_streaming_equals_one_process(extra):
    one, = run(config(micro=4, **extra))
    ranks = run(config(micro=2, teacher_ranks=1, **extra), 3)          # rank 0 teacher, ranks 1-2 students
    assert [r.role for r in ranks] == ["teacher", "student", "student"]
    assert np.allclose(losses(ranks[1]), losses(one), rtol=1e-5, atol=1e-6)
    assert np.array_equal(losses(ranks[1]), losses(ranks[2]))
    for name, p in one.student.model.named_parameters():
        q = dict(ranks[2].student.model.named_parameters())[name]
        assert np.allclose(p.data, q.data, rtol=1e-4, atol=1e-5), name


@pytest.mark.timeout(60)
def test_co_located_data_parallel_distillation_equals_one_process():
    one, = run(config(micro=4, top_k=5))
    ranks = run(config(micro=2, top_k=5), 2)                            # teacher + student on both ranks
    assert [r.role for r in ranks] == ["teacher+student"] * 2
    assert np.allclose(losses(ranks[0]), losses(one), rtol=1e-5, atol=1e-6)
    assert ranks[0].section().get("stream") is None                     # nothing streamed


@pytest.mark.timeout(60)
@pytest.mark.parametrize("top_k,patient", [(None, None), (4, None), (None, "skip"), (2, "last")])
def test_bytes_teacher_to_students_follow_the_formula(top_k, patient):
    steps, acc, b, k = 3, 2, 2, 2
    cfg = config(micro=b, steps=steps, teacher_ranks=k, top_k=top_k, patient=patient)
    cfg["gradient_accumulation_steps"] = acc
    ranks = run(cfg, 5)                                                  # 2 teacher ranks, 3 students
    per_micro = b * SEQ * (VOCAB * 4 if top_k is None else top_k * (4 + 2))   # float32 values, uint16 ids
    per_micro += (b * SEQ * C * 4) if patient else 0                    # one mapped block: L_s − 1 = 1
    expect = steps * acc * per_micro                                     # per student
    sent = [r.section()["stream"]["bytes_sent"] for r in ranks[:k]]
    got = [r.section()["stream"]["bytes_received"] for r in ranks[k:]]
    assert got == [expect] * 3
    assert sent == [2 * expect, expect]                                  # teacher 0 serves students 0 and 2
    assert ranks[k].expected_bytes_per_step() == acc * per_micro
    full = ranks[k].expected_bytes_per_step(top_k=None)
    assert full == acc * (b * SEQ * VOCAB * 4 + (b * SEQ * C * 4 if patient else 0))


@pytest.mark.parametrize("distill,world,key", [
    ({"teacher": {"model": {"vocab_size": 20}}}, 2, "distillation.teacher.model.vocab_size"),
    ({"teacher": {"model": {"block_size": 32}}}, 2, "distillation.teacher.model.block_size"),
    ({"teacher": {"model": {"n_layer": 1}}, "patient": {"mapping": "skip"}}, 2, "distillation.teacher.model.n_layer"),
    ({"teacher": {"model": {"n_layer": 3}}, "teacher_ranks": 2}, 2, "distillation.teacher_ranks"),
    ({"teacher": {"load": "ckpt/"}}, 2, "distillation.teacher.load"),
    ({"teacher": {"model": {"n_layer": 3}}, "top_k": 14}, 2, "distillation.top_k"),
])
def test_bad_input_fails_clearly_on_every_rank(distill, world, key):
    cfg = dict(config(), distillation=distill)

    out = errors_on_every_rank(cfg, world)
    assert [k for k, _ in out] == [key] * world                          # every rank, same error, no hang
    assert "set it to" in out[0][1] or "raise it" in out[0][1] or "lower" in out[0][1] or "--save" in out[0][1] \
        or "remove it" in out[0][1]


def test_trainer_refuses_a_distillation_config():
    with pytest.raises(ConfigError, match="distill_rank"):
        Trainer(config())


@pytest.mark.timeout(60)
def test_train_cli_writes_the_distillation_report(tmp_path, capsys):
    cfg = config(micro=2, steps=3, top_k=4, teacher_ranks=1, patient="last")
    path, rep = tmp_path / "c.json", tmp_path / "r.json"
    path.write_text(json.dumps(cfg))
    assert train_main(["--config", str(path), "--world-size", "3", "--report", str(rep), "--quiet"]) == 0
    r = json.loads(rep.read_text())
    d = r["distillation"]
    assert r["world_size"] == 3 and len(r["steps"]) == 3 and [x["role"] for x in r["ranks"]] == \
        ["teacher", "student", "student"]
    assert d["teacher"]["memory"]["gradients"] == d["teacher"]["memory"]["optimizer_states"] == 0
    assert d["teacher"]["memory"]["parameters"] == 4 * d["teacher"]["n_params"]
    assert d["student"]["model_states"]["parameters"] == 4 * d["student"]["n_params"]
    for h in d["losses"]:                                                 # loss = α·T²·KL + (1−α)·CE + β·PKD
        assert h["loss"] == pytest.approx(0.5 * 4 * h["kl"] + 0.5 * h["ce"] + h["pkd"], rel=1e-5)
    per_step = 2 * SEQ * 4 * (4 + 2) + 2 * SEQ * C * 4
    assert d["stream"]["bytes_per_step_per_student"] == per_step
    assert d["stream"]["bytes_received"] == d["stream"]["bytes_sent"] == 2 * 3 * per_step
    assert "teacher -> students" in capsys.readouterr().out
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(dict(cfg, distillation={"teacher_ranks": 3})))
    assert train_main(["--config", str(bad), "--world-size", "3", "--quiet"]) == 2
    assert "distillation.teacher_ranks" in capsys.readouterr().err
