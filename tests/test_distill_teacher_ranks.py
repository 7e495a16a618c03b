"""Teacher ranks streaming to a tensor- and pipeline-parallel student: equal to one rank in
float64 (relative ≤ 1e-9: every step's loss and parts, the final weights), and the stream's
bytes in the message log equal the formula of :mod:`minidist.distill.streaming` — the whole
stream D·t·m·payload per step, and each student rank exactly what its part of the loss needs
(every tp rank the soft targets without a pipeline; with one, the last stage the soft targets
and each stage the states of the teacher blocks matched with its blocks; a stage needing
nothing receives nothing)."""
import numpy as np
import pytest

from minidist import distributed as dist
from minidist.distill.losses import pkd_pairs
from minidist.distill.runner import distill_rank
from minidist.distill.streaming import TAGS, payload_bytes, stream_bytes, student_need
from minidist.training.config import load_config
from test_distill_parallel import PARTS, config, one_rank, relative

pytestmark = [pytest.mark.distill, pytest.mark.timeout(60)]

SEQ, W = 8, 8                        # 8 tokens a sequence, float64 values


def _rank(comm, cfg):
    r = distill_rank(comm, cfg)
    log = r.stream_log
    stream = (sum(e.nbytes for e in log.messages("send") if e.tag in TAGS),
              sum(e.nbytes for e in log.messages("recv", "recv") if e.tag in TAGS))
    if r.student is None:
        return None, r.wire.vocab, stream
    return np.array([[h[k] for k in PARTS] for h in r.student.history]), r.student.full_parameters(), stream


@pytest.mark.parametrize("world,k,micro,acc,layers,parallel,distill", [
    (3, 1, 4, 2, 2, {"tensor": 2, "sequence_parallel": True}, {"patient": "skip", "top_k": 5}),
    (3, 1, 4, 2, 2, {"pipeline": 2}, {"temperature": 4.0}),
    (5, 1, 2, 2, 4, {"pipeline": 2, "tensor": 2, "schedule": "zb_v"}, {"patient": "last"}),
    (6, 2, 2, 2, 2, {"pipeline": 2}, {"patient": "skip", "top_k": 5}),
], ids=["tp2-sp-pkd-topk", "pp2", "pp2-tp2-zb_v-pkd", "2-teachers-pp2-dp2-pkd-topk"])
def test_teacher_ranks_stream_to_a_tp_pp_student_equal_one_rank(world, k, micro, acc, layers, parallel, distill):
    cfg = config(micro, acc, parallel, layers=layers, teacher_ranks=k, **distill)
    t, p = parallel.get("tensor", 1), parallel.get("pipeline", 1)
    replicas, steps = (world - k) // (t * p), cfg["steps"]
    losses, weights = one_rank(acc, distill, micro * replicas, layers)
    out = dist.spawn(_rank, world, cfg)
    vocab = out[0][1]                                                   # the corpus's characters
    for got, params, _ in out[k:]:
        assert relative(got, losses) <= 1e-9, (got, losses)
        for name, want in weights.items():
            assert relative(params[name], want) <= 1e-9, name
    # the stream: the teachers send D·t·m·payload per step, and each student rank receives its need
    top_k, patient = distill.get("top_k"), distill.get("patient")
    blocks = layers - 1 if patient else 0
    assert sum(sent for *_, (sent, _) in out[:k]) == steps * stream_bytes(replicas, t, acc, micro, SEQ, vocab, W,
                                                                           top_k, 16, blocks) > 0
    merged = load_config(cfg, world)
    pairs = pkd_pairs(layers, 2 * layers, patient) if patient else []
    received = []
    for j, (*_, (_, got)) in enumerate(out[k:]):
        _, need = student_need(merged, pairs, j, world - k)
        assert got == steps * acc * payload_bytes(micro, SEQ, vocab, W, top_k, 16, len(need.blocks), need.soft)
        received.append(got)
    if p == 1:
        assert len(set(received)) == 1                                        # every tp rank: the whole payload
    elif not patient:
        assert sorted(received)[:t * replicas] == [0] * t * replicas            # the first stage: nothing
    assert sum(received) == steps * stream_bytes(replicas, t, acc, micro, SEQ, vocab, W, top_k, 16, blocks)


def test_student_needs_follow_the_pipeline_layout():
    """Who needs what, from the config alone (the teacher ranks compute it too): DualPipeV on 2
    ranks puts chunks 0 and 3 on rank 0, 1 and 2 on rank 1; with 4 student blocks PKD-Last
    matches blocks 1-3 with teacher blocks 5-7 of 8."""
    cfg = load_config(config(2, 4, {"pipeline": 2, "tensor": 2, "schedule": "dualpipe_v"}, layers=4,
                             patient="last", teacher_ranks=1), 9)
    pairs = pkd_pairs(4, 8, "last")
    needs = [student_need(cfg, pairs, j, 8) for j in range(8)]
    # tp fastest, then dp, then pp: ranks 0-3 are pipeline rank 0, replicas 0, 0, 1, 1
    assert [d for d, _ in needs] == [0, 0, 1, 1, 0, 0, 1, 1]
    assert {(n.soft, n.blocks) for _, n in needs[:4]} == {(True, (5,))}
    assert {(n.soft, n.blocks) for _, n in needs[4:]} == {(False, (6, 7))}


def test_cli_teacher_rank_and_a_pp2_tp2_student_report(tmp_path):
    """``python -m minidist.train --world-size 5``: one teacher rank and a PP2 × TP2 student; the
    report names each student rank's place in the grid and the stream's bytes by the formula."""
    import json

    from minidist.train import main as train_main
    cfg = config(2, 2, {"pipeline": 2, "tensor": 2}, teacher_ranks=1, top_k=5)
    (tmp_path / "c.json").write_text(json.dumps(cfg))
    assert train_main(["--config", str(tmp_path / "c.json"), "--world-size", "5", "--quiet",
                       "--report", str(tmp_path / "r.json")]) == 0
    r = json.loads((tmp_path / "r.json").read_text())
    assert [(x["role"], x["coords"]["pp"], x["coords"]["tp"]) for x in r["ranks"]] == \
        [("teacher", 0, 0), ("student", 0, 0), ("student", 0, 1), ("student", 1, 0), ("student", 1, 1)]
    s, vocab = r["distillation"]["stream"], r["model"]["vocab_size"]
    assert s["bytes_sent"] == s["bytes_received"] == 3 * stream_bytes(1, 2, 2, 2, SEQ, vocab, W, 5)
    assert s["bytes_per_step_per_student"] == 2 * payload_bytes(2, SEQ, vocab, W, 5)   # one tensor column
