"""Distillation in every layout the Trainer builds: the student tensor parallel (with SP and
Patient KD: the head's differentiable all-gather gives the KD loss the whole vocabulary),
pipeline parallel (the KD loss on the last stage, the frozen teacher's soft targets there),
both, and under ZeRO-3 (the root unit gathered again for the logits' backward) — each equal to
one rank in float64 (relative ≤ 1e-9: every step's loss and parts, the final weights); the tp
student's extra bytes by the formula; and what is refused before any rank starts, on every
rank, naming the key."""
import numpy as np
import pytest

from minidist import distributed as dist
from minidist.distill.runner import distill_rank, run
from _distill import errors_on_every_rank

pytestmark = [pytest.mark.distill, pytest.mark.timeout(60)]

PARTS = ("loss", "kl", "ce", "pkd")
_ONE = {}


def config(micro=4, acc=2, parallel=None, zero=0, layers=2, **distill):
    return {"data": {"dataset": "english", "seq_len": 8}, "dtype": "float64", "steps": 3, "eval_iters": 1,
            "model": {"block_size": 8, "n_layer": layers, "n_embd": 16, "n_head": 2},
            "train_micro_batch_size_per_gpu": micro, "gradient_accumulation_steps": acc,
            "parallel": parallel or {}, "zero_optimization": {"stage": zero},
            "distillation": {"teacher": {"model": {"n_layer": 2 * layers}, "steps": 2}, **distill}}


def one_rank(acc, distill, micro=4, layers=2):
    key = repr((acc, sorted(distill.items()), micro, layers))
    if key not in _ONE:
        r, = run(config(micro, acc, layers=layers, **distill))
        _ONE[key] = (np.array([[h[k] for k in PARTS] for h in r.student.history]),
                     {n: p.data.copy() for n, p in r.student.model.named_parameters()})
    return _ONE[key]


def _rank(comm, cfg):
    r = distill_rank(comm, cfg)
    return np.array([[h[k] for k in PARTS] for h in r.student.history]), r.student.full_parameters()


def relative(got, want) -> float:
    return float(np.max(np.abs(got - want)) / np.max(np.abs(want)))


@pytest.mark.parametrize("world,micro,acc,parallel,zero,distill", [
    (2, 4, 2, {"tensor": 2}, 0, {"patient": "skip", "top_k": 5}),
    (2, 4, 2, {"tensor": 2, "sequence_parallel": True}, 0, {"patient": {"mapping": "last", "beta": 0.5}}),
    (2, 4, 4, {"pipeline": 2}, 0, {"temperature": 4.0, "alpha": 0.9}),
    (4, 4, 4, {"pipeline": 2, "tensor": 2}, 0, {"top_k": 5}),
    (2, 2, 2, {}, 3, {"patient": "skip", "top_k": 5}),
], ids=["tp2-pkd-topk", "tp2-sp-pkd", "pp2", "pp2-tp2-topk", "zero3-dp2-pkd"])
def test_student_layouts_equal_one_rank(world, micro, acc, parallel, zero, distill):
    losses, weights = one_rank(acc, distill)
    for got, params in dist.spawn(_rank, world, config(micro, acc, parallel, zero, **distill)):
        assert relative(got, losses) <= 1e-9, (got, losses)
        for name, want in weights.items():
            assert relative(params[name], want) <= 1e-9, name
    assert abs(losses[-1, 0] - losses[0, 0]) > 1e-3                       # it really trained


@pytest.mark.parametrize("world,micro,acc,layers,parallel,distill", [
    (2, 4, 2, 2, {"pipeline": 2, "schedule": "1f1b"}, {"patient": "skip", "top_k": 5}),
    (2, 2, 4, 4, {"pipeline": 2, "schedule": "dualpipe_v", "overlap_f_b": True},
     {"patient": {"mapping": "last", "beta": 0.5}}),
    (4, 2, 2, 2, {"pipeline": 2, "tensor": 2, "sequence_parallel": True}, {"patient": "skip", "top_k": 5}),
], ids=["pp2-1f1b", "pp2-dualpipe_v-overlapped", "pp2-tp2-sp"])
def test_patient_kd_under_a_pipeline_equals_one_rank(world, micro, acc, layers, parallel, distill):
    """Each chunk holding matched student blocks adds its share of the PKD loss where it is
    computed (carried by the backward of its output, as a MoE aux loss; on the last chunk added
    to the KD loss): every step's loss and parts (KL, CE, PKD) and the final weights equal one
    rank's. DualPipeV's V puts matched blocks on chunks 0, 1 and 2 of 4 (rank 1 holds two, in
    the middle of the model), its overlapped F&B pairs included."""
    losses, weights = one_rank(acc, distill, micro, layers)
    for got, params in dist.spawn(_rank, world, config(micro, acc, parallel, layers=layers, **distill)):
        assert relative(got, losses) <= 1e-9, (got, losses)
        for name, want in weights.items():
            assert relative(params[name], want) <= 1e-9, name
    assert losses[:, 3].min() > 1e-3 and abs(losses[-1, 3] - losses[0, 3]) > 1e-3      # the PKD part is there


@pytest.mark.parametrize("world,cfg,key,words", [
    (4, config(micro=2, parallel={"tensor": 2}, teacher_ranks=1), "distillation.teacher_ranks",
     "leave 3 student ranks in a world of 4, which tensor × pipeline = 2 does not divide; run on 1 + a multiple of 2"),
    (8, config(micro=1, parallel={"pipeline": 2}, teacher_ranks=4), "distillation.teacher_ranks",
     "global batch of 2 sequences"),                      # 2 replicas of the 4 student ranks, not 4 ranks
    (2, config(parallel={"pipeline": 2}, teacher={"model": {"n_layer": 3}}), "distillation.teacher.model.n_layer",
     "the teacher trains in the student's layout"),
], ids=["teacher-ranks-tp", "teacher-ranks-batch", "teacher-layers-pipeline"])
def test_what_does_not_compose_is_refused_on_every_rank(world, cfg, key, words):
    errors = errors_on_every_rank(cfg, world)
    assert all(e is not None and e[0] == key and words in e[1] for e in errors), errors


def test_cli_pipeline_distillation_with_progress_bars_on_every_rank(tmp_path, capsys):
    """Without --quiet every rank takes part in the progress line's collective (it hung when only
    rank 0 did); the teacher in the report is the whole frozen model."""
    import json

    from minidist.train import main as train_main
    cfg = tmp_path / "c.json"
    cfg.write_text(json.dumps(config(parallel={"pipeline": 2}, acc=2)))
    assert train_main(["--config", str(cfg), "--world-size", "2", "--report", str(tmp_path / "r.json")]) == 0
    assert capsys.readouterr().err.count("step 3/3") == 1           # the student's bar, on rank 0 only
    t = json.loads((tmp_path / "r.json").read_text())["distillation"]["teacher"]
    assert t["memory"]["parameters"] == 8 * t["n_params"]            # float64, every parameter of it


def _step_bytes(comm, cfg):
    import copy

    from minidist.training.trainer import Trainer
    if cfg["distillation"] is not None:
        s = distill_rank(comm, copy.deepcopy(cfg)).student
    else:
        s = Trainer(copy.deepcopy(cfg), comm)
        s.fit(progress=False)
    return [h["bytes_sent"] for h in s.history], s.layers.padded_vocab_size


def test_tp_student_sends_the_logits_gather_in_place_of_the_vocab_parallel_cross_entropy():
    """Per micro-batch of N = b·s positions, the KD student's head all-gathers the logits,
    (t−1)/t·N·V_padded·w bytes per rank, where plain training's vocab-parallel cross-entropy
    all-reduces max, target logit and sum-exp, 3 · 2(t−1)/t·N·w; everything else is the same."""
    t, acc, b, s, w = 2, 2, 4, 8, 8
    cfg = config(micro=b, acc=acc, parallel={"tensor": t})
    kd, plain = (dist.spawn(_step_bytes, t, c)[0] for c in (cfg, dict(cfg, distillation=None)))
    v = kd[1]
    extra = acc * (t - 1) * b * s * w * (v - 6) // t
    assert [x - y for x, y in zip(kd[0], plain[0])] == [extra] * 3
