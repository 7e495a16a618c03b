"""The experts in the estimator and the train report: ``python -m minidist.estimate --experts
--ep --top-k --capacity-factor`` gives the experts' memory per rank and the all-to-all bytes by
the formulas; a run prints what it measured beside them, equal; under real ``mpirun`` too."""
import copy
import json
import math

import pytest

from minidist import distributed as dist
from minidist.estimate.cli import main as estimate_main
from minidist.estimate.moe import expert_parameters
from minidist.train import _rank_main

from _mpi import run_mpi

pytestmark = [pytest.mark.moe, pytest.mark.timeout(120)]

CONFIG = {"model": {"n_layer": 2, "n_embd": 16, "n_head": 2, "block_size": 8,
                    "moe": {"num_experts": 4, "top_k": 2, "capacity_factor": 1.0}},
          "data": {"dataset": "english", "seq_len": 8}, "steps": 2, "eval_iters": 1,
          "train_micro_batch_size_per_gpu": 2, "gradient_accumulation_steps": 2, "parallel": {"expert": 2}}


def test_the_estimator_gives_the_experts_memory_and_all_to_all_bytes_by_the_formulas(capsys):
    assert estimate_main(["--layers", "4", "--hidden", "64", "--heads", "4", "--seq", "32", "--vocab", "100",
                          "--micro-batch", "2", "--dp", "8", "--ep", "4", "--experts", "8", "--top-k", "2",
                          "--capacity-factor", "1.25", "--every-n-layers", "2", "--zero", "1", "--precision", "bf16",
                          "--json"]) == 0
    est = json.loads(capsys.readouterr().out)["moe"][0]
    h, n, E, ep = 64, 2, 8, 4                               # blocks 0 and 2 of 4 are MoE
    psi = n * (E // ep) * (8 * h * h + 5 * h)
    assert est["expert_parameters_per_rank"] == psi == n * (E // ep) * expert_parameters(h)
    assert est["model_states"] == {"parameters": 2 * psi, "gradients": 2 * psi,
                                   "optimizer_states": 12 * psi / (8 // 4), "total": 4 * psi + 6 * psi}
    C = math.ceil(1.25 * 64 * 2 / E)                        # a group: micro-batch 2 × seq 32 tokens
    assert est["capacity"] == C == 20
    assert est["all_to_all_bytes"] == (ep - 1) / ep * E * C * h * 2
    assert est["all_to_all_per_step"] == 4 * n and est["all_to_all_bytes_per_step"] == 4 * n * est["all_to_all_bytes"]
    text = estimate_main(["--layers", "4", "--hidden", "64", "--heads", "4", "--seq", "32", "--vocab", "100",
                          "--dp", "8", "--ep", "4", "--experts", "8"]) == 0 and capsys.readouterr().out
    assert "Mixture of experts" in text and "each all-to-all sends" in text


def test_the_estimator_refuses_what_the_trainer_refuses(capsys):
    for flags, words in ((["--experts", "6", "--ep", "4"], "not divisible by --ep"),
                         (["--experts", "16", "--ep", "16"], "does not divide the data-parallel degree"),
                         (["--experts", "2", "--top-k", "3"], "larger than --experts"),
                         (["--ep", "2"], "give --experts")):
        with pytest.raises(SystemExit):
            estimate_main(["--layers", "2", "--hidden", "16", "--heads", "2", "--seq", "8", "--vocab", "50",
                           "--dp", "8", "--zero", "1", *flags])
        assert words in capsys.readouterr().err, flags


def _check_report(report):
    est, load = report["moe"]["estimate"], report["moe"]["load"]
    for r in report["ranks"]:
        m = r["moe"]
        assert m["memory"]["parameters"] == est["model_states"]["parameters"], r["rank"]
        assert m["memory"]["optimizer_states"] == est["model_states"]["optimizer_states"], r["rank"]
        assert m["all_to_all_per_step"] == est["all_to_all_per_step"] == 4 * 2 * 2
        assert m["all_to_all_bytes_per_step"] == est["all_to_all_bytes_per_step"] > 0
    tokens = CONFIG["train_micro_batch_size_per_gpu"] * 8 * 4 * 2      # micro × seq × dp ranks × micro-steps
    assert all(sum(v["load"]) == tokens * 2 for step in load for v in step.values())   # k = 2 choices each


@pytest.mark.parametrize("stage", [0, 1])
def test_the_train_report_prints_the_experts_measured_beside_the_estimate_and_they_are_equal(stage):
    cfg = copy.deepcopy(CONFIG)
    cfg["zero_optimization"] = {"stage": stage}
    out = dist.spawn(lambda comm: _rank_main(comm, cfg, False), 4, timeout=90)
    report = out[0][1]
    _check_report(report)
    from minidist.report import format_data_parallel
    text = format_data_parallel(report)
    assert "mixture of experts" in text and "all-to-all bytes sent / step" in text and "dropped" in text


@pytest.mark.mpi
def test_under_mpirun_the_report_and_the_losses_are_the_in_process_runs(tmp_path):
    path = tmp_path / "config.json"
    path.write_text(json.dumps(CONFIG))
    r = run_mpi(4, ["-m", "minidist.train", "--config", path, "--quiet", "--report", tmp_path / "r.json"], timeout=150)
    assert r.returncode == 0, r.stderr[-3000:]
    report = json.loads((tmp_path / "r.json").read_text())
    _check_report(report)
    inproc = dist.spawn(lambda comm: _rank_main(comm, copy.deepcopy(CONFIG), False), 4, timeout=90)[0][1]
    assert [s["loss"] for s in report["steps"]] == [s["loss"] for s in inproc["steps"]]
    assert report["moe"]["load"] == json.loads(json.dumps(inproc["moe"]["load"]))
