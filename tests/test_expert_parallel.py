"""Expert parallelism (minidist.parallel.expert) trains like one rank with the same groups
(float64, relative ≤ 1e-9 after every step): ep = 2 and 4, with data parallelism, ZeRO-1/2,
tensor (and sequence) parallelism and clipping; the all-to-all traffic is (ep − 1)/ep · E · C · h · itemsize per all-to-all,
four per MoE layer and micro-batch; bad input is refused on every rank, naming the fix."""
import copy
import math

import numpy as np
import pytest

from minidist import distributed as dist
from minidist.parallel.expert import all_to_all_bytes
from minidist.testing import train_steps

from _refusal import trainer_errors

pytestmark = [pytest.mark.moe, pytest.mark.timeout(120)]

SEQ, E, K, CF = 8, 4, 2, 0.75            # capacity 0.75 · 16 · 2 / 4 = 6 of 8: some assignments are dropped
BASE = {"model": {"n_layer": 2, "n_embd": 8, "n_head": 2, "block_size": SEQ, "dropout": 0.1,
                  "moe": {"num_experts": E, "top_k": K, "capacity_factor": CF, "every_n_layers": 1,
                          "aux_loss_coef": 0.1, "z_loss_coef": 0.01}},
        "data": {"dataset": "english", "seq_len": SEQ}, "steps": 2, "dtype": "float64",
        "gradient_accumulation_steps": 2, "optimizer": {"type": "AdamW", "params": {"lr": 1e-2}}}
GLOBAL = 4                                # sequences per micro-step over all data-parallel ranks


def config(world, ep, tp=1, stage=0, clip=0.0, sp=False):
    dp = world // tp
    cfg = copy.deepcopy(BASE)
    cfg["gradient_clipping"] = clip           # 0.05: below the gradients' norm, so every step clips
    cfg["train_micro_batch_size_per_gpu"] = GLOBAL // dp
    cfg["model"]["moe"]["group_size"] = GLOBAL // dp * SEQ        # one group per rank and micro-batch
    cfg["parallel"] = {"expert": ep, "tensor": tp, "sequence_parallel": sp}
    cfg["zero_optimization"] = {"stage": stage}
    return cfg


def one_rank(cfg):
    serial = copy.deepcopy(cfg)
    serial["train_micro_batch_size_per_gpu"] = GLOBAL
    serial["parallel"] = {"expert": 1, "tensor": 1, "sequence_parallel": False}
    serial["zero_optimization"] = {"stage": 0}
    return train_steps(serial)                   # the same groups: group_size tokens each


def relative(a, b):
    return max(float(np.max(np.abs(a[k] - b[k])) / np.max(np.abs(b[k]))) for k in b)


@pytest.mark.parametrize("world,ep,tp,stage,clip,sp", [
    (2, 2, 1, 0, 0.0, False), (4, 4, 1, 0, 0.0, False), (4, 2, 1, 0, 0.0, False), (4, 2, 1, 2, 0.0, False),
    (4, 2, 2, 0, 0.0, False), (4, 2, 2, 0, 0.0, True), (4, 4, 1, 0, 0.05, False), (4, 2, 1, 2, 0.05, False),
    (4, 2, 2, 1, 0.05, False)],
    ids=["ep2", "ep4", "ep2-dp2", "ep2-dp2-zero2", "ep2-tp2", "ep2-tp2-sp", "ep4-clip", "ep2-dp2-zero2-clip",
         "ep2-tp2-zero1-clip"])
def test_expert_parallel_trains_like_one_rank_with_the_same_groups(world, ep, tp, stage, clip, sp):
    cfg = config(world, ep, tp, stage, clip, sp)
    ref = one_rank(cfg)
    runs = dist.spawn(train_steps, world, cfg, timeout=90)
    for r in runs:
        assert r["trainer"].model.transformer.h[0].mlp.expert_ids == \
            list(range(r["trainer"].grid.coords.get("ep", 0) * E // ep, (r["trainer"].grid.coords.get("ep", 0) + 1) * E // ep))
        for step, params in enumerate(r["params"]):
            assert relative(params, ref["params"][step]) <= 1e-9, (step, r["trainer"].rank)
        # the rank's model states at the step: both strategies' exact layouts (experts over grid.dp)
        assert {k: r["model_states"][k] for k in r["expected_model_states"]} == r["expected_model_states"]
        if tp == 1:       # the step's bytes beside the all-to-alls: both strategies' and the joint norm's
            log = r["trainer"].step_log
            a2a = sum(c.bytes_sent for c in log.collectives if c.op == "all_to_all" and c.rank == r["trainer"].rank)
            assert r["history"][-1]["bytes_sent"] - a2a == r["expected_bytes_sent"]
    dp = world // tp
    losses = [np.mean([r["history"][s]["loss"] for r in runs if r["trainer"].grid.coords["tp"] == 0])
              for s in range(2)]
    np.testing.assert_allclose(losses, [h["loss"] for h in ref["history"]], rtol=1e-9)
    # load per expert: the data-parallel ranks' counts add up to one rank's
    for s in range(2):
        for layer in (0, 1):
            got = np.sum([r["history"][s]["moe"][layer]["load"] for r in runs
                          if r["trainer"].grid.coords["tp"] == 0], axis=0)
            assert got.tolist() == ref["history"][s]["moe"][layer]["load"], (s, layer)
    assert dp >= ep and sum(ref["history"][0]["moe"][0]["load"]) == 2 * GLOBAL * SEQ * K


def _all_to_alls(comm, cfg):
    run = train_steps(comm, cfg, steps=1)
    log = run["trainer"].step_log
    return [(c.op, c.bytes_sent, c.group) for c in log.collectives if c.op == "all_to_all" and c.rank == comm.rank]


@pytest.mark.parametrize("ep", [2, 4])
def test_all_to_all_bytes_are_the_formula_four_per_layer_and_micro_batch(ep):
    cfg = config(4, ep)
    got = dist.spawn(_all_to_alls, 4, cfg, timeout=60)
    tokens = GLOBAL // 4 * SEQ
    C = math.ceil(CF * tokens * K / E)
    each = all_to_all_bytes(ep, E, C, BASE["model"]["n_embd"], 8)
    assert each == (ep - 1) / ep * E * C * 8 * 8
    for calls in got:
        n_layers, micro = BASE["model"]["n_layer"], BASE["gradient_accumulation_steps"]
        assert len(calls) == 4 * n_layers * micro
        assert all(b == each for _, b, _ in calls), calls
        assert all(len(g) == ep for _, _, g in calls)


@pytest.mark.parametrize("change,key,words", [
    ({"parallel": {"expert": 3}}, "parallel.expert", "num_experts 4 is not divisible"),
    ({"parallel": {"expert": 4, "tensor": 2}}, "parallel.expert", "does not divide the data-parallel degree 2"),
    ({"model": {"moe": {"top_k": 5}}}, "model.moe.top_k", "larger than model.moe.num_experts"),
    ({"model": {"moe": {"capacity_factor": 0.0}}}, "model.moe.capacity_factor", "must be > 0"),
    ({"gradient_clipping": 1.0, "parallel": {"data_parallel": "parameter_server"}}, "gradient_clipping",
     "the parameter server reduces them inside it"),
])
def test_bad_expert_parallel_input_is_refused_on_every_rank(change, key, words):
    cfg = config(4, 2)
    def merge(tree, change):
        for k, v in change.items():
            if isinstance(v, dict) and isinstance(tree.get(k), dict):
                merge(tree[k], v)
            else:
                tree[k] = v
    merge(cfg, change)
    errors = trainer_errors(cfg, 4)
    assert len(set(errors)) == 1 and errors[0] is not None, errors
    assert f"'{key}'" in errors[0] and words in errors[0], errors[0]


def _inject_inf(comm, cfg):
    """Step 0 as usual; in step 1 rank 1 finds an inf in one of its experts' gradients."""
    from minidist.training.trainer import Trainer
    trainer = Trainer(copy.deepcopy(cfg), comm)
    trainer.train_step(0)
    before = {n: p.data.copy() for n, p in trainer.model.named_parameters()}
    strategy, launch = trainer.strategy, trainer.strategy.after_backward

    def after_backward():
        if comm.rank == 1 and strategy.dense.sync_gradients:
            next(p for p in trainer.model.parameters() if p.expert).grad[0, 0] = np.inf
        launch()
    strategy.after_backward = after_backward
    trainer.train_step(1)
    same = all(np.array_equal(p.data, before[n]) for n, p in trainer.model.named_parameters())
    scaler = trainer.precision.scaler
    return [(h["skipped"], h["loss_scale"]) for h in trainer.history], same, (scaler.loss_scale, scaler.state_dict())


@pytest.mark.parametrize("stage", [0, 2])
def test_one_overflow_verdict_and_one_loss_scale_over_experts_and_the_rest(stage):
    """An inf in one rank's experts makes every rank skip the step (the other ep rank's experts
    and every non-expert parameter too), and the one loss scaler sees one overflow."""
    from minidist.precision.loss_scaler import from_config
    cfg = config(4, 2, stage=stage)
    cfg.update(dtype="float32", fp16={"enabled": True, "initial_scale_power": 8, "hysteresis": 1},
               gradient_clipping=0.05)
    out = dist.spawn(_inject_inf, 4, cfg, timeout=60)
    once = from_config(cfg["fp16"])
    once.update_scale(False)
    once.update_scale(True)
    for history, unchanged, (scale, state) in out:
        assert history == [(False, 256.0), (True, 256.0)] and unchanged, out
        assert scale == once.loss_scale == 128.0 and state == once.state_dict()
