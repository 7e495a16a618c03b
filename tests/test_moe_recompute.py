"""Mixture of experts under full activation recomputation (minidist.recompute's side losses):
a checkpointed block's first forward keeps no graph, so its MoE aux and z losses join the step's
loss as stand-ins whose gradient the recompute injects into the recomputed losses' backward.
Bit-identical to the same run without recomputation (float64: losses, every parameter after
every step, load per expert and drops counted once) on one rank, with expert parallelism and
under a pipeline with a split backward; without the injection the gradients differ. The
recomputed FLOPs equal the estimator's 4h² + h·E + 8h²·E·C/T weights per token of a MoE block,
and the activations kept are the checkpoints only, as for dense blocks."""
import copy
import functools

import numpy as np
import pytest

import minidist.recompute as recompute
from minidist import distributed as dist
from minidist.device import Device
from minidist.estimate import estimate
from minidist.estimate.activations import activation_memory
from minidist.estimate.moe import block_weights_per_token
from minidist.model import GPT, GPTConfig, Recompute
from minidist.moe import MoEConfig
from minidist.testing import train_steps

pytestmark = [pytest.mark.moe, pytest.mark.checkpointing, pytest.mark.timeout(60)]

MOE = {"num_experts": 4, "top_k": 2, "capacity_factor": 1.0, "aux_loss_coef": 0.1, "z_loss_coef": 0.01,
       "group_size": 7, "every_n_layers": 1}
BASE = {"model": {"n_layer": 4, "n_embd": 8, "n_head": 2, "block_size": 8, "dropout": 0.1, "moe": MOE},
        "data": {"dataset": "copy", "n_digits": 3, "seq_len": 7}, "dtype": "float64", "steps": 2,
        "train_micro_batch_size_per_gpu": 2, "gradient_accumulation_steps": 2,
        "optimizer": {"type": "Adam", "params": {"lr": 1e-2}}}
POLICIES = {"full": {"granularity": "full"}, "full_uniform_2": {"granularity": "full", "num_layers": 2},
            "full_block_1": {"granularity": "full", "method": "block", "num_layers": 1}}


@functools.lru_cache(maxsize=None)
def baseline(world=1, **parallel):
    """The run without recomputation (shared by the tests of one layout)."""
    return dist.spawn(train_steps, world, config(None, parallel)) if world > 1 else [train_steps(config())]


def config(policy=None, parallel=None):
    cfg = copy.deepcopy(BASE)
    cfg["parallel"] = parallel or {}
    if policy:
        cfg["activation_checkpointing"] = POLICIES[policy]
    return cfg


def assert_identical(runs_a, runs_b):
    for a, b in zip(runs_a, runs_b):
        assert [h["loss"] for h in a["history"]] == [h["loss"] for h in b["history"]]
        assert [h["moe"] for h in a["history"]] == [h["moe"] for h in b["history"]]     # stats once
        for pa, pb in zip(a["params"], b["params"]):
            for k in pb:
                assert np.array_equal(pa[k], pb[k]), k


@pytest.mark.parametrize("policy", list(POLICIES))
def test_one_rank_is_bit_identical_to_no_recomputation_and_recomputes_the_estimated_flops(policy):
    run = train_steps(config(policy))
    assert_identical([run], baseline())
    dev, steps = run["trainer"].device, len(run["history"])
    recomputed = sum(dev.flops_by_op.get(f"recompute {op}", 0) for op in ("linear", "attention", "matmul"))
    # what the train report prints beside each other (minidist.report.recompute_report)
    assert recomputed / steps == pytest.approx(estimate(run["trainer"].cfg)["flops"]["recompute_flops"], rel=1e-12)


def test_without_the_injected_gradients_the_routers_would_not_learn_the_same(monkeypatch):
    monkeypatch.setattr(recompute, "_side_loss_modules", lambda fn: [])
    lost, ref = train_steps(config("full")), baseline()[0]
    assert lost["history"][0]["loss"] == ref["history"][0]["loss"]     # the value was counted ...
    router = "transformer.h.0.mlp.router.weight"
    assert not np.allclose(lost["params"][0][router], ref["params"][0][router], rtol=1e-6)   # ... not its gradient


def test_expert_parallelism_is_bit_identical_to_no_recomputation():
    par = {"expert": 2}
    assert_identical(dist.spawn(train_steps, 2, config("full", par)), baseline(2, **par))


def test_a_pipeline_with_a_split_backward_and_experts_is_bit_identical_and_counts_the_moe_losses_once():
    par = {"pipeline": 2, "schedule": "zb_v", "expert": 2}
    full, none = dist.spawn(train_steps, 4, config("full", par)), dist.spawn(train_steps, 4, config(None, par))
    assert_identical(full, none)
    carried = [r["trainer"].pipeline.steps[-1]["moe_losses"] for r in full]
    assert carried == [r["trainer"].pipeline.steps[-1]["moe_losses"] for r in none] and any(c > 0 for c in carried)


@pytest.mark.parametrize("method,k,every", [("uniform", 1, 1), ("uniform", 2, 2), ("block", 1, 2), ("block", 3, 1)])
def test_recomputed_flops_and_kept_activations_equal_the_estimators(method, k, every):
    S, B, H, A, L = 8, 2, 16, 4, 4
    moe = {**MOE, "every_n_layers": every, "group_size": None}
    cfg = GPTConfig(block_size=S, vocab_size=11, n_layer=L, n_head=A, n_embd=H, dropout=0.1,
                    moe=MoEConfig(**moe))
    dev = Device("laptop")
    with dev:
        model = GPT(cfg, seed=1, dtype=np.float64).set_recompute(Recompute("full", method, k))
        model.set_dropout_key(0, 0)
        x = model.embed(np.random.default_rng(0).integers(0, 11, (B, S)))
        before = dev.memory.current["activations"]
        y = model.blocks(x)
        held = dev.memory.current["activations"] - before
        (y * y).mean().backward()
    recomputed = sum(dev.flops_by_op.get(f"recompute {op}", 0) for op in ("linear", "attention", "matmul"))
    checkpointed = list(range(L)) if method == "uniform" else list(range(k))
    weights = block_weights_per_token(checkpointed, H, moe, B * S)
    attention_core = 4 * H * S * len(checkpointed)                      # QKᵀ and PV per token and layer
    assert recomputed == pytest.approx(B * S * (2 * weights + attention_core), rel=1e-12) and recomputed > 0
    if method == "uniform":                                             # only the units' inputs are kept
        est = activation_memory(S, B, H, A, L, checkpointing="full", precision_bytes=8, method=method, num_layers=k)
        assert held == est["total"]
