"""The estimator with experts in every layout: per rank, the model states at the optimizer step,
the bytes sent in a step, the all-to-alls and the tensor-parallel and pipeline parts of them
equal :func:`minidist.estimate.grid3d.estimate_for_config` exactly (minidist.estimate.moe_grid:
each pipeline stage's own MoE blocks, experts over dp/ep ranks and the rest over dp, the MoE
blocks' tp collectives on slot buffers); the train report's ``layout`` and ``moe`` sections say
the same, name the ep degree and the two gradient groups; ``python -m minidist.estimate`` prints
the same rows."""
import copy
import json

import pytest

from minidist import distributed as dist
from minidist.estimate.cli import main as estimate_main
from minidist.estimate.grid3d import estimate_for_config
from minidist.parallel.expert.accounting import expert_memory
from minidist.parallel.tensor.accounting import tp_bytes_by_op
from minidist.report import format_data_parallel
from minidist.train import _rank_main
from minidist.training.config import load_config
from minidist.training.trainer import Trainer

pytestmark = [pytest.mark.moe, pytest.mark.estimate, pytest.mark.timeout(120)]

STATES = ("parameters", "gradients", "optimizer_states")


def config(n_layer=2, moe=None, dtype="float64", **extra):
    cfg = {"model": {"n_layer": n_layer, "n_embd": 16, "n_head": 2, "block_size": 8,
                     "moe": {"num_experts": 4, "top_k": 2, "capacity_factor": 1.0, **(moe or {})}},
           "data": {"dataset": "english", "seq_len": 8}, "steps": 2, "eval_iters": 1, "dtype": dtype,
           "train_micro_batch_size_per_gpu": 2}
    cfg.update(copy.deepcopy(extra))
    return cfg


def two_steps(comm, cfg):
    """Two steps: the experts' optimizer states exist from the first step's update on, so the
    second step's snapshot holds every model state."""
    trainer = Trainer(copy.deepcopy(cfg), comm)
    trainer.train_step(0)
    trainer.train_step(1)
    return trainer


CASES = {
    "EP2 x DP2 DDP": (4, config(parallel={"expert": 2})),
    "EP2 x DP2 ZeRO-1": (4, config(parallel={"expert": 2}, zero_optimization={"stage": 1})),
    "EP2 x DP2 ZeRO-2, 2 micro-batches": (4, config(parallel={"expert": 2}, zero_optimization={"stage": 2},
                                                   gradient_accumulation_steps=2)),
    "MoE x PP2 1F1B": (2, config(parallel={"pipeline": 2}, gradient_accumulation_steps=2)),
    "EP2 x PP2": (4, config(parallel={"pipeline": 2, "expert": 2}, gradient_accumulation_steps=2)),
    "EP2 x TP2": (4, config(parallel={"tensor": 2, "expert": 2})),
    "EP2 x TP2 SP ZeRO-2, groups of 4, top-1": (4, config(moe={"group_size": 4, "top_k": 1},
                                                         parallel={"tensor": 2, "expert": 2, "sequence_parallel": True},
                                                         zero_optimization={"stage": 2})),
    "every_n_layers 2, EP2 x PP2 ZeRO-1: the last stage holds no expert": (
        4, config(moe={"every_n_layers": 2}, parallel={"pipeline": 2, "expert": 2}, zero_optimization={"stage": 1},
                  gradient_accumulation_steps=2)),
    "every_n_layers 2 over 4 blocks, MoE x PP2": (2, config(4, {"every_n_layers": 2}, parallel={"pipeline": 2},
                                                            gradient_accumulation_steps=2)),
    "EP2 x DP2 ZeRO-3, 2 micro-batches": (4, config(parallel={"expert": 2}, zero_optimization={"stage": 3},
                                                   gradient_accumulation_steps=2)),
    "EP2 x DP2 ZeRO-1 bf16 with clipping, buckets of 500": (
        4, config(dtype="float32", parallel={"expert": 2}, bf16={"enabled": True}, gradient_clipping=1.0,
                  zero_optimization={"stage": 1, "reduce_bucket_size": 500})),
}


@pytest.mark.parametrize("case", list(CASES))
def test_every_rank_measures_what_the_estimate_says(case):
    world, cfg = CASES[case]
    trainers = dist.spawn(two_steps, world, cfg)
    est = estimate_for_config(trainers[0].cfg, world, trainers[0].model_config.vocab_size)
    ep = cfg["parallel"].get("expert", 1)
    for rank, tr in enumerate(trainers):
        want = est["ranks"][tr.grid.coords["pp"]]
        where = f"{case}: rank {rank} {tr.grid.coords}"
        sent, experts = want["bytes_sent"], want["experts"]
        assert {k: tr.strategy.model_states[k] for k in STATES} == {k: want["model_states"][k] for k in STATES}, where
        assert tr.history[-1]["bytes_sent"] == sent["total"], (where, sent, tr.step_log.summary())
        calls = [c for c in tr.step_log.collectives if c.op == "all_to_all"]
        assert sum(c.bytes_sent for c in calls) == sent["all_to_all"] == experts["all_to_all_bytes_per_step"], where
        assert len(calls) == experts["all_to_all_per_step"], where
        assert tr.step_log.bytes_sent("send") == sent["pipeline"], where
        mine = expert_memory(tr)                           # the experts' own states on this rank
        assert mine == {k: experts["model_states"][k] for k in ("parameters", "optimizer_states")}, where
        if tr.grid.tp_size > 1:                            # the MoE blocks' tp collectives on slot buffers
            assert sum(tp_bytes_by_op(tr).values()) == sent["tensor_parallel"], where
    # under a pipeline each stage holds its own MoE blocks: the stages' counts add up to the model's
    blocks = range(cfg["model"]["n_layer"])
    every = cfg["model"]["moe"].get("every_n_layers", 1)
    assert sum(r["experts"]["moe_layers"] for r in est["ranks"]) == len([i for i in blocks if i % every == 0])
    if ep > 1:                                             # the all-to-all of one MoE block: (ep-1)/ep·E·C·h·w
        e = est["ranks"][0]["experts"]
        assert e["all_to_all_bytes"] == (ep - 1) * (4 // ep) * e["capacity"] * 16 * (2 if "bf16" in cfg else 8)


def test_a_stage_without_experts_sends_no_all_to_all_and_keeps_one_strategy():
    world, cfg = CASES["every_n_layers 2, EP2 x PP2 ZeRO-1: the last stage holds no expert"]
    est = estimate_for_config(load_config(copy.deepcopy(cfg), world), world, 50)
    first, last = est["ranks"]
    assert first["experts"]["moe_layers"] == 1 and last["experts"]["moe_layers"] == 0
    assert last["experts"]["all_to_all_per_step"] == 0 and "all_to_all" in last["bytes_sent"]
    assert last["bytes_sent"]["all_to_all"] == 0 and last["experts"]["model_states"]["total"] == 0


def _report(world, cfg):
    return dist.spawn(lambda comm: _rank_main(comm, copy.deepcopy(cfg), False), world, timeout=90)[0][1]


def test_the_report_names_ep_and_both_gradient_groups_and_its_rows_and_the_cli_equal_the_run(capsys):
    """EP 2 × PP 2 in float32 (what the CLI's fp32 counts): the report's layout rows, its moe
    section per pipeline rank, and ``python -m minidist.estimate`` with the same flags agree with
    what every rank measured."""
    cfg = config(dtype="float32", moe={"every_n_layers": 2}, parallel={"pipeline": 2, "expert": 2},
                 zero_optimization={"stage": 1}, gradient_accumulation_steps=2)
    report = _report(4, cfg)
    lay = report["layout"]
    assert lay["grid"] == {"dp": 1, "tp": 1, "pp": 2, "ep": 2}
    assert lay["data_parallel_groups"] == {"experts": 1, "others": 2}
    assert sorted((r["coords"]["ep"], r["coords"]["pp"]) for r in lay["ranks"]) == [(0, 0), (0, 1), (1, 0), (1, 1)]
    for r in lay["ranks"]:
        assert r["model_states"] == r["model_states_estimate"], r
        assert r["bytes_sent_per_step"] == r["bytes_sent_per_step_estimate"], r
        assert r["all_to_all_bytes_per_step"] == r["all_to_all_bytes_per_step_estimate"], r
    moe = report["moe"]
    for r in report["ranks"]:                          # each stage's experts and all-to-alls, not the model's
        stage = moe["ranks"][r["coords"]["pp"]]
        if r["moe"] is None:                           # a stage without MoE blocks
            assert stage["model_states"]["total"] == stage["all_to_all_per_step"] == 0 == r["coords"]["pp"] - 1
            continue
        assert r["moe"]["memory"] == {k: stage["model_states"][k] for k in ("parameters", "optimizer_states")}
        assert r["moe"]["all_to_all_per_step"] == stage["all_to_all_per_step"]
        assert r["moe"]["all_to_all_bytes_per_step"] == stage["all_to_all_bytes_per_step"]
    assert [s["moe_layers"] for s in moe["ranks"]] == [1, 0]
    assert moe["estimate"]["all_to_all_per_step"] == 4 * 1 * 2       # rank 0's stage: 1 MoE block × 2 micro-batches
    text = format_data_parallel(report)
    assert "layout: dp 1 × ep 2 × tp 1 × pp 2" in text and "pipeline 2 × data 2 (dp 1 × ep 2)" in text
    assert "grid.dp_ep (2 ranks" in text and "grid.dp (1 rank(s): the experts, E/2 per ep rank)" in text
    assert "pipeline rank 1: 0 MoE layer(s)" in text

    flags = ["--layers", "2", "--hidden", "16", "--heads", "2", "--seq", "8", "--vocab",
             str(report["model"]["vocab_size"]), "--micro-batch", "2", "--micro-batches", "2", "--dp", "2",
             "--pp", "2", "--ep", "2", "--experts", "4", "--top-k", "2", "--capacity-factor", "1.0",
             "--every-n-layers", "2", "--zero", "1", "--precision", "fp32", "--schedule", "1f1b"]
    assert estimate_main(flags + ["--json"]) == 0
    cli = json.loads(capsys.readouterr().out)
    rows = cli["per_pipeline_rank"][0]["ranks"]
    for r in lay["ranks"]:
        row = rows[r["coords"]["pp"]]
        assert {k: row["model_states"][k] for k in r["model_states"]} == r["model_states"], r
        assert row["bytes_sent"]["total"] == r["bytes_sent_per_step"]
        assert row["bytes_sent"]["all_to_all"] == r["all_to_all_bytes_per_step"]
    assert [s["all_to_all_per_step"] for s in cli["moe"][0]["per_pipeline_rank"]] == [8, 0]
    assert estimate_main(flags) == 0
    printed = capsys.readouterr().out
    assert "all-to-all" in printed and "with experts over ep = 2 of the dp = 2 ranks" in printed
    assert "MoE blocks" in printed and "each pipeline rank's below" in printed


def test_without_a_pipeline_the_report_layout_and_the_moe_section_equal_every_rank():
    """EP 2 × DP 2 alone now gets a layout section too (dp 2 × ep 2)."""
    report = _report(4, config(parallel={"expert": 2}, zero_optimization={"stage": 2}))
    lay = report["layout"]
    assert lay["grid"] == {"dp": 2, "tp": 1, "pp": 1, "ep": 2}
    assert lay["data_parallel_groups"] == {"experts": 2, "others": 4}
    for r in lay["ranks"]:
        assert (r["model_states"], r["bytes_sent_per_step"]) == (r["model_states_estimate"],
                                                                 r["bytes_sent_per_step_estimate"]), r
    est = report["moe"]["estimate"]
    for r in report["ranks"]:
        assert r["moe"]["memory"] == {k: est["model_states"][k] for k in ("parameters", "optimizer_states")}


def test_the_estimator_refuses_what_expert_parallelism_refuses():
    from minidist.estimate.grid3d import estimate_3d
    moe = {"num_experts": 4}
    with pytest.raises(ValueError, match="does not divide the data-parallel degree"):
        estimate_3d(2, 16, 2, 50, 8, 8, 2, 1, dp=3, moe=moe, ep=2)
    with pytest.raises(ValueError, match="not divisible by ep 8"):
        estimate_3d(2, 16, 2, 50, 8, 8, 2, 1, dp=8, moe=moe, ep=8)
    with pytest.raises(ValueError, match="give the experts"):
        estimate_3d(2, 16, 2, 50, 8, 8, 2, 1, dp=2, ep=2)


def test_moe_x_pp_the_moe_section_is_each_stages_not_twice_it():
    """MoE × PP 2 (1F1B): each stage holds one of the two MoE blocks; the section's estimate is
    rank 0's stage's (it was the whole model's, twice the measured)."""
    report = _report(2, config(parallel={"pipeline": 2}, gradient_accumulation_steps=2))
    moe = report["moe"]
    assert [s["moe_layers"] for s in moe["ranks"]] == [1, 1] and moe["estimate"]["moe_layers"] == 1
    for r in report["ranks"]:
        stage = moe["ranks"][r["coords"]["pp"]]
        assert r["moe"]["memory"] == {k: stage["model_states"][k] for k in ("parameters", "optimizer_states")}
    assert "mixture of experts: 1 MoE layer(s) on rank 0's pipeline stage" in format_data_parallel(report)


def test_zero_without_expert_parallelism_leaves_the_experts_optimizer_states_unmeasured():
    """ep = 1 under ZeRO-1: the experts' elements share the buckets' shards with the rest, so the
    section shows '-' for their optimizer states rather than a number that is not theirs."""
    report = _report(2, config(zero_optimization={"stage": 1}))
    assert all(r["moe"]["memory"]["optimizer_states"] is None for r in report["ranks"])
    line = next(x for x in format_data_parallel(report).splitlines() if x.startswith("expert optimizer states B"))
    assert line.split()[4] == "-"
    for r in report["ranks"]:
        assert r["moe"]["memory"]["parameters"] == report["moe"]["estimate"]["model_states"]["parameters"]


def test_the_cli_with_tp_sp_and_ep_prints_what_ep2_x_tp2_measured(capsys):
    """EP 2 × TP 2 with sequence parallelism, ZeRO-2, 2 micro-batches (float32)."""
    report = _report(4, config(dtype="float32", parallel={"tensor": 2, "expert": 2, "sequence_parallel": True},
                               zero_optimization={"stage": 2}, gradient_accumulation_steps=2))
    assert estimate_main(["--layers", "2", "--hidden", "16", "--heads", "2", "--seq", "8", "--vocab",
                          str(report["model"]["vocab_size"]), "--micro-batch", "2", "--micro-batches", "2",
                          "--dp", "2", "--tp", "2", "--sp", "--ep", "2", "--experts", "4", "--capacity-factor", "1.0",
                          "--zero", "2", "--precision", "fp32", "--json"]) == 0
    row = json.loads(capsys.readouterr().out)["per_pipeline_rank"][0]["ranks"][0]
    assert report["layout"]["grid"] == {"dp": 1, "tp": 2, "pp": 1, "ep": 2}
    for r in report["layout"]["ranks"]:
        assert r["model_states"] == {k: row["model_states"][k] for k in STATES} == r["model_states_estimate"], r
        assert r["bytes_sent_per_step"] == row["bytes_sent"]["total"] == r["bytes_sent_per_step_estimate"], r
        assert r["all_to_all_bytes_per_step"] == row["bytes_sent"]["all_to_all"] > 0, r


def _one_step(comm, cfg):
    trainer = Trainer(copy.deepcopy(cfg), comm)
    trainer.train_step(0)
    return trainer


@pytest.mark.parametrize("case", ["EP2 x DP2 DDP", "EP2 x DP2 ZeRO-1", "EP2 x DP2 ZeRO-3, 2 micro-batches"])
def test_the_first_steps_snapshot_holds_the_experts_optimizer_states(case):
    """The experts' Adam states are created by their own step, after the other parameters'
    step took its snapshot: the rank's model states at step 1 are the estimate already."""
    world, cfg = CASES[case]
    trainers = dist.spawn(_one_step, world, cfg)
    est = estimate_for_config(trainers[0].cfg, world, trainers[0].model_config.vocab_size)
    for tr in trainers:
        want = est["ranks"][tr.grid.coords["pp"]]["model_states"]
        assert {k: tr.strategy.model_states[k] for k in STATES} == {k: want[k] for k in STATES}, tr.grid.coords


def test_the_experts_estimate_charges_plain_sgd_no_state():
    """moe_for_config reads the optimizer as the other estimates do (optimizer_key): SGD with
    momentum 0 keeps no state (it charged a momentum buffer)."""
    from minidist.estimate.moe import moe_for_config
    from minidist.training.config import load_config
    base = {"model": {"n_layer": 2, "n_embd": 16, "n_head": 2, "block_size": 8, "moe": {"num_experts": 4}},
            "data": {"seq_len": 8}}
    plain = load_config({**base, "optimizer": {"type": "SGD", "params": {"lr": 0.1}}}, 2)
    momentum = load_config({**base, "optimizer": {"type": "SGD", "params": {"lr": 0.1, "momentum": 0.9}}}, 2)
    assert moe_for_config(plain, 2, 8)["model_states"]["optimizer_states"] == 0
    assert moe_for_config(momentum, 2, 8)["model_states"]["optimizer_states"] > 0
