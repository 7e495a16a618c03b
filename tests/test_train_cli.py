"""``python -m minidist.train``: in-process ranks, the §10 report with the measured numbers
beside the ZeRO formulas, and config errors."""
import json
import os
import subprocess
import sys

import pytest

from minidist.train import main

pytestmark = pytest.mark.cli

CONFIG = {"model": {"n_layer": 2, "n_embd": 16, "n_head": 2, "block_size": 8},
          "data": {"dataset": "copy", "n_digits": 3, "seq_len": 7}, "steps": 2,
          "train_micro_batch_size_per_gpu": 2, "eval_iters": 1}


def write(tmp_path, extra):
    path = tmp_path / "config.json"
    path.write_text(json.dumps({**CONFIG, **extra}))
    return str(path)


def check_report(report, world_size, steps=2):
    assert report["world_size"] == world_size
    assert [s["step"] for s in report["steps"]] == list(range(steps))
    for s in report["steps"]:
        assert {"step", "loss", "loss_scale", "sim_time"} <= set(s)
    assert [r["rank"] for r in report["ranks"]] == list(range(world_size))
    for r in report["ranks"]:
        assert {"peak_bytes", "peak_by_category", "resident_by_category"} <= set(r["memory"])
        assert {"bytes_sent", "bytes_received", "by_op"} <= set(r["comm"])
        assert r["coords"]["dp"] == r["rank"]
    assert report["estimate"] is not None and "config" in report


@pytest.mark.parametrize("stage", [0, 2])
def test_world_size_two_in_process(tmp_path, capsys, stage):
    out = tmp_path / "report.json"
    rc = main(["--config", write(tmp_path, {"zero_optimization": {"stage": stage}}), "--world-size", "2",
               "--report", str(out), "--quiet"])
    assert rc == 0
    report = json.loads(out.read_text())
    check_report(report, 2)
    formula = report["data_parallel"]["formula"]
    for r in report["ranks"]:
        dp = r["data_parallel"]
        assert dp["model_states"]["optimizer_states"] == formula["model_states"]["optimizer_states"]
        assert dp["bytes_sent_per_step"] == formula["bytes_sent_per_step"] > 0
        assert r["comm"]["bytes_sent"] >= 2 * dp["bytes_sent_per_step"]
    printed = capsys.readouterr().out
    assert "formula" in printed and "sent/step" in printed


def test_single_rank_unchanged(tmp_path):
    out = tmp_path / "r.json"
    assert main(["--config", write(tmp_path, {}), "--report", str(out), "--quiet"]) == 0
    report = json.loads(out.read_text())
    check_report(report, 1)
    assert report["ranks"][0]["comm"]["bytes_sent"] == 0


def test_bad_config_exit_code_and_key(tmp_path, capsys):
    rc = main(["--config", write(tmp_path, {"zero_optimization": {"stage": 2, "reduce_bucket_size": 0}}),
               "--world-size", "2", "--quiet"])
    assert rc == 2
    assert "zero_optimization.reduce_bucket_size" in capsys.readouterr().err


def test_module_entry_point(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    out = tmp_path / "r.json"
    p = subprocess.run([sys.executable, "-m", "minidist.train", "--config", write(tmp_path, {"zero_optimization":
                        {"stage": 1}}), "--world-size", "3", "--report", str(out), "--quiet"],
                       capture_output=True, text=True, timeout=60, env=env)
    assert p.returncode == 0, p.stderr
    check_report(json.loads(out.read_text()), 3)


@pytest.mark.precision
@pytest.mark.parametrize("fmt", ["fp16", "bf16"])
def test_mixed_precision_run_reports_loss_scale_and_k12(tmp_path, capsys, fmt):
    fp16 = {"enabled": fmt == "fp16", "initial_scale_power": 20, "hysteresis": 1, "loss_scale_window": 4}
    extra = {"zero_optimization": {"stage": 2}, "steps": 8, "fp16": fp16, "bf16": {"enabled": fmt == "bf16"}}
    out = tmp_path / "report.json"
    assert main(["--config", write(tmp_path, extra), "--world-size", "2", "--report", str(out), "--quiet"]) == 0
    report = json.loads(out.read_text())
    check_report(report, 2, steps=8)
    scales = [s["loss_scale"] for s in report["steps"]]
    if fmt == "fp16":   # 2^20 overflows this model: halved on each skipped step until it fits
        assert scales[0] == 2.0 ** 20 and report["steps"][0]["skipped"]
        for now, nxt, s in zip(scales, scales[1:], report["steps"]):
            assert nxt == (now / 2 if s["skipped"] else now) or nxt == 2 * now
    else:
        assert scales == [1.0] * 8 and not any(s["skipped"] for s in report["steps"])
    f = report["data_parallel"]["formula"]
    assert f["precision"] == fmt and f["K"] == 12 and f["bytes_per_element"] == 2
    psi = report["model"]["n_params"]
    for r in report["ranks"]:
        m = r["data_parallel"]["model_states"]
        assert m["parameters"] == 2 * psi == f["model_states"]["parameters"]
        assert m["optimizer_states"] == f["model_states"]["optimizer_states"] == 12 * psi / 2
        assert r["data_parallel"]["bytes_sent_per_step"] == f["bytes_sent_per_step"]
    printed = capsys.readouterr().out
    assert f"mixed precision: {fmt}" in printed and "K = 12" in printed
