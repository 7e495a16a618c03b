"""Expert parallelism composed with two more features, where the pairs of tests/test_composition.py
did not reach: each combination trains like one rank on the same global batch (float64: relative
≤ 1e-9 after every step; fp16/bf16: within the format's tolerance, the same loss-scale decisions),
with the cells' own configs (tiny GPT, block 0 of 2 MoE, E = 4, ep 2).

* **a pipeline stage without experts** (PP 2, ``every_n_layers`` 2: stage 1 holds none) with
  clipping, fp16 or bf16: that stage takes part in the experts' overflow verdict (over the world)
  and clipping norm (over grid.mp), or the stages' collectives pair up wrongly and then hang
  (:mod:`minidist.parallel.expert.strategy`);
* **ZeRO-3 on a pipeline with ep = dp**: the experts' data-parallel group has one rank, so their
  part holds them whole and gathers nothing around the pipeline's actions;
* **LAMB under tensor (and sequence) parallelism with experts**: both optimizers of the two
  gradient groups take the trust ratio of whole tensors, summed over the tp slices."""
import numpy as np
import pytest

import test_composition as TC

pytestmark = [pytest.mark.moe, pytest.mark.timeout(120)]


def trains_like_one_rank(names) -> dict:
    """Train the combination on its ranks and on one rank; assert what tests/test_composition.py
    asserts of a cell (losses, weights after every step, loss scales) and return the runs and
    the largest difference measured."""
    cfg, world = TC.cell_config(names)
    mixed = bool(cfg.get("fp16", {}).get("enabled") or cfg.get("bf16", {}).get("enabled"))
    ref, runs = TC.reference(cfg), TC._train(cfg, world)
    want = [h["loss"] for h in ref["history"]]
    par = cfg["parallel"]
    dp = world // (par.get("tensor", 1) * par.get("pipeline", 1))
    got = [sum(r["history"][k]["loss"] for r in runs if r["trainer"].grid.coords["tp"] == 0) / dp
           for k in range(len(want))]
    np.testing.assert_allclose(got, want, rtol=1e-3 if mixed else 1e-9)
    if mixed:
        for r in runs:
            assert [h["loss_scale"] for h in r["history"]] == [h["loss_scale"] for h in ref["history"]]
            assert [h["skipped"] for h in r["history"]] == [h["skipped"] for h in ref["history"]]
    worst = max(TC.close(params, ref["params"][step], mixed) for r in runs for step, params in enumerate(r["params"]))
    assert worst <= (3e-2 if mixed else 1e-9), worst
    assert abs(want[-1] - want[0]) > 1e-4                                   # it really trained
    return {"runs": runs, "worst": worst, "cfg": cfg}


def _stage_without_experts(runs) -> list:
    return [r for r in runs if not any(getattr(p, "expert", False) for p in r["trainer"].model.parameters())]


@pytest.mark.parametrize("names", [("PP", "EP", "clipping"), ("PP", "EP", "ZeRO-1", "clipping"),
                                   ("PP", "EP", "fp16"), ("PP", "EP", "bf16"), ("PP", "EP", "fp16", "clipping")],
                         ids=["clip", "zero1-clip", "fp16", "bf16", "fp16-clip"])
def test_a_pipeline_stage_without_experts_joins_the_experts_verdict_and_norm(names):
    out = trains_like_one_rank(names)
    plain = _stage_without_experts(out["runs"])
    assert len(plain) == 2 and all(r["trainer"].strategy.experts is None for r in plain)   # stage 1 holds none
    if "clipping" in names:   # one norm on every rank, the whole model's: stage 1's counts stage 0's experts
        norms = [r["trainer"].strategy._norm for r in out["runs"]]
        assert max(norms) - min(norms) <= 1e-12 * max(norms) and min(norms) > out["cfg"]["gradient_clipping"], norms


def test_zero3_on_a_pipeline_with_ep_equal_to_dp_holds_the_experts_whole():
    out = trains_like_one_rank(("ZeRO-3", "PP", "EP"))
    with_experts = [r for r in out["runs"] if r not in _stage_without_experts(out["runs"])]
    assert with_experts and all(r["trainer"].strategy.experts.name == "single" for r in with_experts)


@pytest.mark.parametrize("names", [("TP", "LAMB", "EP"), ("TP", "SP", "LAMB", "EP"), ("TP", "PP", "LAMB", "EP", "clipping")],
                         ids=["tp", "sp", "tp-pp-clip"])
def test_lamb_under_tensor_parallelism_with_experts_takes_whole_tensor_trust_ratios(names):
    out = trains_like_one_rank(names)
    for r in out["runs"]:
        for part in r["trainer"].strategy.parts:
            assert part.optimizer.whole_tensor_squares is not None


def test_the_loss_of_an_expert_parallel_pipeline_is_the_mean_over_every_replica():
    """The run's per-step loss (what the CLI and the report print) under PP × EP is the mean over
    the dp × ep replicas, as without expert parallelism on the same ranks (it was summed over
    the ep replicas and divided by grid.dp only: twice the loss)."""
    from minidist import distributed as dist
    from minidist.train import run
    base = {"model": {"n_layer": 2, "n_head": 2, "n_embd": 16, "block_size": 8,
                      "moe": {"num_experts": 4, "top_k": 2}},
            "data": {"seq_len": 8}, "steps": 2, "eval_iters": 1, "seed": 1, "dtype": "float64",
            "train_micro_batch_size_per_gpu": 2, "gradient_accumulation_steps": 2}
    losses = {}
    for ep in (1, 2):
        cfg = {**base, "parallel": {"pipeline": 2, "expert": ep}}
        trainers = dist.spawn(lambda comm, cfg=cfg: run(cfg, comm, False)[0], 4, timeout=60)
        losses[ep] = [[h["loss"] for h in t.history] for t in trainers]
        assert all(r == losses[ep][0] for r in losses[ep])           # every rank holds the job's loss
    np.testing.assert_allclose(losses[2][0], losses[1][0], rtol=1e-12)
