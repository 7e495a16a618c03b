"""The executor runs every schedule with real numerics: in float64 each one trains like one
rank (relative ≤ 1e-9) on 2 and 4 pipeline ranks; activations and gradients cross each stage
boundary as b·s·h elements per micro-batch each way (from the message log); DP × PP with
ZeRO-1, fp16 (2-byte wire) and bad input; under mpirun equal to the in-process run."""
import json

import numpy as np
import pytest
from _mpi import run_mpi

from minidist import distributed as dist
from minidist.defaults import SCHEDULES
from minidist.parallel.pipeline import build_schedule
from minidist.testing import train_steps
from minidist.train import main as train_main
from minidist.training.config import ConfigError

pytestmark = [pytest.mark.pipeline, pytest.mark.timeout(60)]

SEQ, EMBD = 7, 8


def config(pp=1, schedule="1f1b", m=4, micro=2, v=1, n_layer=8, extra=None):
    cfg = {"model": {"n_layer": n_layer, "n_embd": EMBD, "n_head": 2, "block_size": 8},
           "data": {"dataset": "copy", "n_digits": 3, "seq_len": SEQ}, "dtype": "float64",
           "train_micro_batch_size_per_gpu": micro, "gradient_accumulation_steps": m, "steps": 3,
           "optimizer": {"type": "Adam", "params": {"lr": 1e-2}},
           "parallel": {"pipeline": pp, "schedule": schedule, "virtual_stages": v}}
    cfg.update(extra or {})
    return cfg


def shape(name, p):
    """(micro-batches, virtual stages) each schedule runs on p ranks in these tests."""
    m = 2 * p if name in ("zb_v", "dualpipe_v") else 4
    return m, 2 if name == "interleaved_1f1b" else 1


def losses(runs):
    """Per step, the loss the last chunk's rank measured (the others record 0)."""
    return [max(abs(r["history"][k]["loss"]) for r in runs) for k in range(len(runs[0]["history"]))]


@pytest.mark.parametrize("p", [2, 4])
@pytest.mark.parametrize("name", SCHEDULES)
def test_every_schedule_trains_like_one_rank(name, p):
    m, v = shape(name, p)
    ref = train_steps(None, config(m=m))
    runs = dist.spawn(train_steps, p, config(p, name, m, v=v))
    want = [h["loss"] for h in ref["history"]]
    for got, w in zip(losses(runs), want):
        assert abs(got - w) <= 1e-9 * abs(w), f"{name} p={p}: loss {got} vs one rank {w}"
    for rank, run in enumerate(runs):                      # each rank's parameters too
        for step in range(3):
            for key, value in run["params"][step].items():
                np.testing.assert_allclose(value, ref["params"][step][key], rtol=1e-9, atol=1e-12,
                                           err_msg=f"{name} p={p} rank {rank} step {step} {key}")
    assert abs(want[-1] - want[0]) > 1e-3                  # the model really trained


def test_zb_v_built_for_the_configs_pass_times_trains_like_one_rank():
    """parallel.pass_times reaches the engine: its zb_v is the one built for those times (here
    with fewer micro-batches than 2p, which torch's ZB-V pads and minidist's too)."""
    extra = {"parallel": {"pipeline": 2, "schedule": "zb_v", "pass_times": [1, 2, 1]}}
    cfg = config(2, "zb_v", 3, extra=extra)
    ref = train_steps(None, config(m=3))
    runs = dist.spawn(train_steps, 2, cfg)
    assert runs[0]["trainer"].pipeline.schedule.actions == build_schedule("zb_v", 2, 3, times=(1, 2, 1)).actions
    for got, want in zip(losses(runs), [h["loss"] for h in ref["history"]]):
        assert abs(got - want) <= 1e-9 * abs(want)


@pytest.mark.parametrize("name,p", [("1f1b", 4), ("interleaved_1f1b", 2), ("zb_v", 2)])
def test_bytes_between_stages_are_bsh_each_way(name, p):
    m, v = shape(name, p)
    b = 2
    runs = dist.spawn(train_steps, p, config(p, name, m, micro=b, v=v))
    s = runs[0]["trainer"].pipeline.schedule
    element = 8                                            # float64
    per_message = b * SEQ * EMBD * element
    for r, run in enumerate(runs):
        sent = run["trainer"].step_log.messages("send")
        assert {e.nbytes for e in sent} == {per_message}
        # one message per micro-batch for every chunk boundary this rank's chunks cross
        forward = sum(1 for st in s.stages_of(r) if st < s.n_stages - 1 and s.stage_to_rank[st + 1] != r)
        backward = sum(1 for st in s.stages_of(r) if st > 0 and s.stage_to_rank[st - 1] != r)
        assert len(sent) == m * (forward + backward), f"rank {r}"
    total = sum(len(run["trainer"].step_log.messages("send")) for run in runs)
    boundaries = sum(1 for st in range(s.n_stages - 1) if s.stage_to_rank[st] != s.stage_to_rank[st + 1])
    assert total == 2 * m * boundaries


def test_dp_times_pp_with_zero1():
    """4 ranks = pp 2 × dp 2, ZeRO-1 over dp: the batch of one rank with micro-batch 2·b."""
    ref = train_steps(None, config(m=4, micro=4))
    runs = dist.spawn(train_steps, 4, config(2, "1f1b", 4, micro=2, extra={"zero_optimization": {"stage": 1}}))
    for run in runs:
        assert run["strategy"] == "zero1"
        for key, value in run["params"][-1].items():
            np.testing.assert_allclose(value, ref["params"][-1][key], rtol=1e-9, atol=1e-12, err_msg=key)


def test_fp16_pipeline_two_byte_wire():
    extra = {"dtype": "float32", "fp16": {"enabled": True, "initial_scale_power": 8}}
    ref = train_steps(None, config(m=4, extra=extra))
    runs = dist.spawn(train_steps, 2, config(2, "zb_h1", 4, extra=extra))
    np.testing.assert_allclose(losses(runs), [h["loss"] for h in ref["history"]], rtol=2e-3)
    sent = runs[0]["trainer"].step_log.messages("send")
    assert {e.nbytes for e in sent} == {2 * SEQ * EMBD * 2}    # b·s·h at 2 bytes


@pytest.mark.parametrize("extra,world,key,match", [
    ({"parallel": {"pipeline": 2, "schedule": "fancy"}}, 2, "parallel.schedule", "choose one of naive"),
    ({"parallel": {"pipeline": 2, "schedule": "dualpipe_v"}, "gradient_accumulation_steps": 3}, 2,
     "gradient_accumulation_steps", "at least 2 × pipeline ranks = 4"),
    ({"parallel": {"pipeline": 2, "schedule": "zb1p"}}, 2, "parallel.schedule", "use 'zb_h1'"),
    ({"parallel": {"pipeline": 2, "schedule": "zb_v", "pass_times": [1, -2, 1]}}, 2, "parallel.pass_times",
     "three positive numbers"),
    ({"parallel": {"pipeline": 2}, "model": {"n_layer": 3, "n_embd": 8, "n_head": 2, "block_size": 8}}, 2,
     "model.n_layer", "do not split evenly into 2"),
    ({"parallel": {"pipeline": 2}}, 3, "parallel", "not divisible by tensor × pipeline = 2"),
])
def test_bad_input_fails_on_every_rank(extra, world, key, match):
    cfg = {**config(), **extra}

    def build(comm):
        try:
            train_steps(comm, cfg, steps=1)
        except ConfigError as e:
            return e.key, str(e)
        return None

    results = dist.spawn(build, world)
    for got in results:                                   # every rank, no hang
        assert got is not None and got[0] == key and match in got[1], got


SCRIPT = """
import json, sys
from minidist import distributed as dist
from minidist.testing import train_steps
cfg = json.loads(sys.argv[1])
def main(comm):
    run = train_steps(comm, cfg)
    out = [h["loss"] for h in run["history"]]
    if comm.rank == comm.size - 1:
        print("LOSSES", json.dumps(out))
dist.run_main(main)
"""


@pytest.mark.mpi
@pytest.mark.timeout(120)
def test_mpirun_equals_in_process():
    cfg = config(2, "zb_h1", 4)
    p = run_mpi(2, ["-c", SCRIPT, json.dumps(cfg)], timeout=100)
    assert p.returncode == 0, p.stderr
    line = [ln for ln in p.stdout.splitlines() if ln.startswith("LOSSES")][0]
    runs = dist.spawn(train_steps, 2, cfg)
    assert json.loads(line.split(" ", 1)[1]) == [h["loss"] for h in runs[-1]["history"]]


def test_report_pipeline_section(tmp_path):
    """The train CLI's report: measured bubble and in-flight beside the schedule's theory; with
    compute-bound devices (tiny α, huge β) and m = 8 the 1F1B bubble is near (p−1)/(m+p−1)."""
    cfg = {**config(2, "1f1b", 8, n_layer=4), "dtype": "float32", "steps": 1, "eval_iters": 1,
           "device": {"flops": 1e9, "alpha": 1e-12, "beta": 1e15}}
    (tmp_path / "c.json").write_text(json.dumps(cfg))
    assert train_main(["--config", str(tmp_path / "c.json"), "--world-size", "2", "--report", str(tmp_path / "r.json"),
                       "--quiet"]) == 0
    pipe = json.loads((tmp_path / "r.json").read_text())["pipeline"]
    assert pipe["schedule"] == "1f1b" and pipe["ranks"] == 2 and pipe["micro_batches"] == 8
    assert pipe["bubble_fraction_theory"] == pytest.approx(1 / 9)     # (p−1)/(m+p−1), from the estimator
    assert "bubble_fraction_formula" not in pipe                        # one theory field
    assert pipe["peak_in_flight_theory"] == [2, 1]                      # min(p−r, m)
    assert pipe["peak_in_flight"] == pytest.approx([2, 1])    # from the memory tracker
    assert 0.5 / 9 < pipe["bubble_fraction"] < 0.3            # measured: unequal stage times


@pytest.mark.parametrize("p", [2, 4])
def test_report_splits_the_step_and_the_schedules_own_bubble_meets_its_theory(p, tmp_path, capsys):
    """On the default device a tiny pipelined model is latency-bound: the measured bubble is
    mostly waiting for messages. The report splits the step into compute, exposed communication
    and idle, and replays the executed actions with free messages: that bubble is the
    schedule's own, within 0.1 of its theory for every schedule at equal stage times."""
    for name in SCHEDULES:
        m, v = 2 * p if name == "dualpipe_v" else p, 2 if name == "interleaved_1f1b" else 1
        cfg = {**config(p, name, m, micro=1, v=v, n_layer=2 * p), "steps": 1, "eval_iters": 1}
        (tmp_path / "c.json").write_text(json.dumps(cfg))
        assert train_main(["--config", str(tmp_path / "c.json"), "--world-size", str(p), "--quiet",
                           "--report", str(tmp_path / "r.json")]) == 0
        pipe = json.loads((tmp_path / "r.json").read_text())["pipeline"]
        split = pipe["step_split"]
        assert sum(split.values()) == pytest.approx(1.0), name
        assert split["compute"] == pytest.approx(1 - pipe["bubble_fraction"]), name
        assert split["exposed_communication"] > 0.5, name                     # latency-bound
        assert abs(pipe["bubble_fraction_without_communication"] - pipe["bubble_fraction_theory"]) <= 0.1, name
        text = capsys.readouterr().out
        assert "without communication (the executed step replayed with free messages)" in text, name
        assert "exposed communication" in text, name
