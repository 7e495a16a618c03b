"""``python -m minidist.train``: in-process ranks, the §10 report with the measured numbers
beside the ZeRO formulas, and config errors."""
import json
import os
import subprocess
import sys

import pytest
from _formulas import bytes_sent, model_states, shard

from minidist.train import main

pytestmark = [pytest.mark.cli, pytest.mark.timeout(120)]

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
    psi = report["model"]["n_params"]
    s = shard([psi], 2)                                   # one bucket (the default 5e8 elements)
    want = model_states(stage, psi, s, w=4, k=8)          # fp32 Adam
    sent = bytes_sent(stage, 2, 4, s)                     # 2(p−1)/p·Ψ·4 for DDP and ZeRO-2 alike
    for r in report["ranks"]:
        dp = r["data_parallel"]
        assert {c: dp["model_states"][c] for c in want} == want
        assert dp["bytes_sent_per_step"] == sent
        assert r["comm"]["bytes_sent"] >= 2 * sent        # two steps (+ evaluation's all-reduces)
    assert report["data_parallel"]["formula"]["bytes_sent_per_step"] == sent     # what the report prints
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


def deepspeed_scales(skipped, init_scale, hysteresis, window, factor=2.0, min_scale=1.0):
    """The loss scale of every step, by DeepSpeed's ``DynamicLossScaler.update_scale``
    (``consecutive_hysteresis=False``), given which steps overflowed: an overflow spends one
    unit of hysteresis, halving only when one is left; a clean step whose distance to the
    last overflow is a multiple of the window doubles the scale and refills the hysteresis."""
    scale, budget, last_overflow, out = init_scale, hysteresis, -1, []
    for it, overflow in enumerate(skipped):
        out.append(scale)
        if overflow:
            if hysteresis == 1 or budget == 1:
                scale = max(scale / factor, min_scale)
            else:
                budget -= 1
            last_overflow = it
        elif (it - last_overflow) % window == 0:
            budget, scale = hysteresis, scale * factor
    return out


@pytest.mark.precision
@pytest.mark.parametrize("fmt", ["fp16", "bf16"])
def test_mixed_precision_run_reports_loss_scale_and_k12(tmp_path, capsys, fmt):
    fp16 = {"enabled": fmt == "fp16", "initial_scale_power": 20, "hysteresis": 2, "loss_scale_window": 3}
    extra = {"zero_optimization": {"stage": 2}, "steps": 12, "fp16": fp16, "bf16": {"enabled": fmt == "bf16"}}
    out = tmp_path / "report.json"
    assert main(["--config", write(tmp_path, extra), "--world-size", "2", "--report", str(out), "--quiet"]) == 0
    report = json.loads(out.read_text())
    check_report(report, 2, steps=12)
    scales = [s["loss_scale"] for s in report["steps"]]
    skipped = [s["skipped"] for s in report["steps"]]
    if fmt == "fp16":   # 2^20 overflows this model: the scale must follow DeepSpeed's rule exactly
        assert scales == deepspeed_scales(skipped, 2.0 ** 20, hysteresis=2, window=3)
        assert skipped[:2] == [True, True] and scales[1] == scales[0]          # the first overflow: hysteresis
        assert scales[2] == scales[1] / 2                                       # the second: halved
        assert any(b > a for a, b in zip(scales, scales[1:]))                   # a clean window: doubled
    else:
        assert scales == [1.0] * 12 and not any(skipped)
    f = report["data_parallel"]["formula"]
    assert f["precision"] == fmt and f["K"] == 12 and f["bytes_per_element"] == 2
    psi = report["model"]["n_params"]
    want = model_states(2, psi, shard([psi], 2), w=2, k=12)                      # 2Ψ + (2 + 12)·Ψ/2
    # 2-byte reduce-scatter + all-gather, and the one-element overflow flag; a skipped step
    # changed nothing, so it needs no all-gather
    clean = bytes_sent(2, 2, 2, shard([psi], 2), scalars=1)
    per_step = [clean - (2 - 1) * shard([psi], 2) * 2 if s else clean for s in skipped]
    assert [s["bytes_sent"] for s in report["steps"]] == per_step
    for r in report["ranks"]:
        assert {c: r["data_parallel"]["model_states"][c] for c in want} == want
        assert r["data_parallel"]["bytes_sent_per_step"] == per_step[-1]
    printed = capsys.readouterr().out
    assert f"mixed precision: {fmt}" in printed and "K = 12" in printed


@pytest.mark.parametrize("dtype,label", [("float32", "(fp32, K = 8)"), ("float64", "(float64, K = 16)")])
def test_the_data_parallel_header_names_the_runs_number_format(tmp_path, capsys, dtype, label):
    """Adam keeps two moments per parameter: K = 8 bytes in float32, 16 in float64 (the header
    said 'fp32, K = 8' for both)."""
    assert main(["--config", write(tmp_path, {"dtype": dtype}), "--world-size", "2", "--quiet"]) == 0
    header = next(x for x in capsys.readouterr().out.splitlines() if "data parallel" in x and "Ψ = " in x)
    assert header.endswith(label), header


@pytest.mark.parametrize("unbuffered", ["1", ""])
def test_a_reader_that_closes_the_pipe_loses_no_report_and_no_exit_status(tmp_path, unbuffered):
    """``python -m minidist.train … | head -1``: the report is written before anything is printed,
    and a closed stdout ends the run quietly with status 0 (it lost the report unbuffered and
    exited 120 buffered)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": unbuffered}
    report = tmp_path / "r.json"
    proc = subprocess.Popen([sys.executable, "-m", "minidist.train", "--config", write(tmp_path, {}), "--quiet",
                             "--report", str(report)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    proc.stdout.close()                                   # the reader is gone before the first line
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=100) == 0, err
    assert "BrokenPipeError" not in err and json.loads(report.read_text())["world_size"] == 1


def test_evaluation_is_not_charged_to_the_device_on_any_number_of_ranks(tmp_path):
    """Validation runs off the simulated device (its FLOPs, clock and trace), as on one rank:
    rank 0's counted FLOPs and simulated time do not change with eval_iters on 2 ranks."""
    seen = {}
    for iters in (1, 4):
        out = tmp_path / f"r{iters}.json"
        assert main(["--config", write(tmp_path, {"eval_iters": iters}), "--world-size", "2", "--quiet",
                     "--report", str(out)]) == 0
        r0 = json.loads(out.read_text())["ranks"][0]
        seen[iters] = (r0["matmul_flops"], r0["sim_time"])
    assert seen[1] == seen[4]


@pytest.mark.parametrize("layout,world", [({"zero_optimization": {"stage": 3}}, 2),
                                          ({"parallel": {"tensor": 2}}, 2),
                                          ({"parallel": {"pipeline": 2}, "gradient_accumulation_steps": 2}, 4)],
                         ids=["zero3", "tp2", "pp2-dp2"])
def test_evaluations_messages_are_not_on_the_clock_or_in_the_log(tmp_path, layout, world):
    """Evaluating every step (eval_interval 1) or only at the end changes nothing a step
    measures: ZeRO-3's gathers, tensor parallelism's forward and the pipeline's whole-model
    broadcast in evaluation are taken back out of the clock, the trace and the message log
    (Device.rolled_back); only the val loss printed differs."""
    seen = {}
    for interval in (0, 1):
        out = tmp_path / f"r{interval}.json"
        assert main(["--config", write(tmp_path, {**layout, "eval_interval": interval, "steps": 3}),
                     "--world-size", str(world), "--quiet", "--report", str(out)]) == 0
        rep = json.loads(out.read_text())
        seen[interval] = ([(s["loss"], s["sim_time"]) for s in rep["steps"]],
                          [(r["sim_time"], r["comm"], r["memory"]) for r in rep["ranks"]])
    assert seen[0] == seen[1]


def test_run_takes_a_config_path_as_the_trainer_does(tmp_path):
    from minidist.train import run
    trainer, _ = run(write(tmp_path, {}), None, False)
    assert len(trainer.history) == CONFIG["steps"]


@pytest.mark.mpi
@pytest.mark.parametrize("bad", [0, 1])
def test_a_start_up_check_failing_on_one_mpi_rank_ends_the_job_naming_it(tmp_path, bad):
    """Under mpirun the start-up checks run on every rank, and one may fail alone (a relative
    --config path its node lacks): the ranks agree before any collective, rank 0 names the
    rank(s) and the error, and every rank exits 2 (the others waited in MPI forever)."""
    from _mpi import run_mpi
    good, other = tmp_path / "good", tmp_path / "other"
    good.mkdir()
    other.mkdir()
    (good / "tiny.json").write_text(json.dumps(CONFIG))
    wrapper = tmp_path / "wrap.py"
    wrapper.write_text("import os, sys\n"
                       f"if os.environ.get('PMI_RANK') == '{bad}':\n    os.chdir({str(other)!r})\n"
                       "from minidist.train import main\nsys.exit(main(sys.argv[1:]))\n")
    proc = run_mpi(2, [wrapper, "--config", "tiny.json", "--quiet"], timeout=60, cwd=good)
    assert proc.returncode == 2, proc.stderr
    assert f"error on rank(s) {bad} of 2: argument --config: cannot read tiny.json" in proc.stderr
