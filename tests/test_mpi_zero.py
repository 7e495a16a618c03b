"""Under ``mpirun``: measured model-state memory equals the ZeRO formula on 4 MPI ranks, the
train CLI runs on 2, and a bad config fails on every rank without hanging."""
import json
import os
import shutil
import subprocess
import sys

import pytest

pytestmark = [pytest.mark.mpi, pytest.mark.zero]

if shutil.which("mpirun") is None:          # pragma: no cover
    pytest.skip("mpirun not on PATH", allow_module_level=True)

CONFIG = {"model": {"n_layer": 2, "n_embd": 16, "n_head": 2, "block_size": 8},
          "data": {"dataset": "copy", "n_digits": 3, "seq_len": 7}, "steps": 1,
          "train_micro_batch_size_per_gpu": 2, "eval_iters": 1}
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def mpirun(n, tmp_path, extra, args=()):
    cfg = tmp_path / "config.json"
    cfg.write_text(json.dumps({**CONFIG, **extra}))
    out = tmp_path / "report.json"
    p = subprocess.run(["mpirun", "-n", str(n), sys.executable, "-m", "minidist.train", "--config", str(cfg),
                        "--report", str(out), "--quiet", *args], capture_output=True, text=True, timeout=90, env=ENV)
    return p, out


@pytest.mark.parametrize("stage", [3])
def test_model_states_equal_formula_under_mpirun(tmp_path, stage):
    p, out = mpirun(4, tmp_path, {"zero_optimization": {"stage": stage}})
    assert p.returncode == 0, p.stderr
    report = json.loads(out.read_text())
    assert report["world_size"] == 4 and len(report["ranks"]) == 4
    f = report["data_parallel"]["formula"]
    assert report["model"]["n_params"] % 4 == 0                    # no padding: exact
    for r in report["ranks"]:
        m = r["data_parallel"]["model_states"]
        for cat in ("parameters", "gradients", "optimizer_states"):
            assert m[cat] == f["model_states"][cat]
        assert r["data_parallel"]["bytes_sent_per_step"] == f["bytes_sent_per_step"]


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
    assert bad.stderr.count("zero_optimization.stage") == 2        # both ranks said why


@pytest.mark.precision
def test_fp16_zero2_under_mpirun_equals_in_process(tmp_path):
    """The same fp16 config under mpirun -n 2 and on 2 in-process ranks: identical losses,
    loss scales and skipped steps (the overflow flag travels over real MPI)."""
    from minidist.train import main
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
    for r in under_mpi["ranks"]:
        assert r["data_parallel"]["model_states"]["optimizer_states"] == \
               under_mpi["data_parallel"]["formula"]["model_states"]["optimizer_states"]
