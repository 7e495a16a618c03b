"""Under ``mpirun``: measured model-state memory equals the ZeRO formula on 4 MPI ranks, the
train CLI runs on 2, and a bad config fails on every rank without hanging."""
import json

import pytest
from _formulas import bytes_sent, gpt_units, model_states, shard
from _mpi import run_mpi

from minidist.train import main

pytestmark = [pytest.mark.mpi, pytest.mark.zero, pytest.mark.timeout(240)]

CONFIG = {"model": {"n_layer": 2, "n_embd": 16, "n_head": 2, "block_size": 8},
          "data": {"dataset": "copy", "n_digits": 3, "seq_len": 7}, "steps": 1,
          "train_micro_batch_size_per_gpu": 2, "eval_iters": 1}


def mpirun(n, tmp_path, extra, args=()):
    cfg = tmp_path / "config.json"
    cfg.write_text(json.dumps({**CONFIG, **extra}))
    out = tmp_path / "report.json"
    p = run_mpi(n, ["-m", "minidist.train", "--config", cfg, "--report", out, "--quiet", *args], timeout=120)
    return p, out


@pytest.mark.parametrize("stage", [3])
def test_model_states_equal_formula_under_mpirun(tmp_path, stage):
    """ZeRO-3 on 4 MPI ranks, fp32 Adam (w = 4, K = 8): (4 + 4 + 8)·Ψ/4 per rank, and
    3·(p−1)/p·Ψ·4 bytes sent per step — every unit divides by 4, so no padding."""
    p, out = mpirun(4, tmp_path, {"zero_optimization": {"stage": stage}})
    assert p.returncode == 0, p.stderr
    report = json.loads(out.read_text())
    assert report["world_size"] == 4 and len(report["ranks"]) == 4
    units = gpt_units(report["model"], report["model"]["vocab_size"])
    psi = sum(units)
    assert report["model"]["n_params"] == psi and shard(units, 4) * 4 == psi
    want = model_states(stage, psi, psi // 4, w=4, k=8)
    assert sum(want.values()) == (4 + 4 + 8) * psi // 4
    for r in report["ranks"]:
        assert {c: r["data_parallel"]["model_states"][c] for c in want} == want
        assert r["data_parallel"]["bytes_sent_per_step"] == bytes_sent(3, 4, 4, psi // 4) == 3 * 3 * psi
    assert [s["bytes_sent"] for s in report["steps"]] == [3 * 3 * psi]


def test_train_cli_two_mpi_ranks_and_bad_config(tmp_path):
    trace = tmp_path / "trace.json"
    p, out = mpirun(2, tmp_path, {"zero_optimization": {"stage": 1}}, ["--trace", str(trace)])
    assert p.returncode == 0, p.stderr
    report = json.loads(out.read_text())
    assert report["world_size"] == 2 and [r["rank"] for r in report["ranks"]] == [0, 1]
    assert report["steps"][0]["sim_time"] > 0
    events = json.loads(trace.read_text())["traceEvents"]          # both MPI ranks' timelines, gathered
    assert {e["pid"] for e in events if e["ph"] == "X" and e["tid"] == "comm"} == {0, 1}
    bad, _ = mpirun(2, tmp_path, {"zero_optimization": {"stage": 4}})
    assert bad.returncode != 0
    assert bad.stderr.count("zero_optimization.stage") == 1        # both ranks stopped; one said why


@pytest.mark.precision
def test_fp16_zero2_under_mpirun_equals_in_process(tmp_path):
    """The same fp16 config under mpirun -n 2 and on 2 in-process ranks: identical losses,
    loss scales and skipped steps (the overflow flag travels over real MPI)."""
    extra = {"zero_optimization": {"stage": 2}, "steps": 6,
             "fp16": {"enabled": True, "initial_scale_power": 20, "hysteresis": 1}}
    p, out = mpirun(2, tmp_path, extra)
    assert p.returncode == 0, p.stderr
    under_mpi = json.loads(out.read_text())
    local_out = tmp_path / "local.json"
    assert main(["--config", str(tmp_path / "config.json"), "--world-size", "2", "--report", str(local_out),
                 "--quiet"]) == 0
    local = json.loads(local_out.read_text())
    keys = ("loss", "loss_scale", "skipped", "bytes_sent")
    assert [[s[k] for k in keys] for s in under_mpi["steps"]] == [[s[k] for k in keys] for s in local["steps"]]
    assert any(s["skipped"] for s in local["steps"])
    psi = under_mpi["model"]["n_params"]
    assert psi % 2 == 0
    for r in under_mpi["ranks"]:                                   # K = 12: fp32 master + Adam's m, v
        assert r["data_parallel"]["model_states"]["optimizer_states"] == 12 * psi // 2
