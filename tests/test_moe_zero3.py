"""Expert parallelism with ZeRO-3 (minidist.parallel.expert over minidist.parallel.data.zero3):
the experts' parameters are partitioned over the expert-data-parallel group (grid.dp, dp/ep
ranks), every other parameter over grid.dp_ep, each gathered and released per unit (a block's
experts are one unit of the experts' ZeRO-3, its attention and router one of the other's).
EP2 × DP2 (with clipping) and EP2 × DP2 × PP2 train like one rank with the same groups
(float64, relative ≤ 1e-9 after every step); every rank's model states and bytes per step equal
the formulas — w·(Ψ_d/(dp·ep) + Ψ_e/dp) elements held between steps, (p_g − 1)·3·m·S_g·w per group
without a pipeline and (p_g − 1)·(2·m·G_g + S_g)·w with one — and the estimators
(minidist.estimate.grid3d per rank, minidist.estimate.moe for the experts)."""
import copy

import numpy as np
import pytest

from minidist import distributed as dist
from minidist.estimate.grid3d import estimate_for_config
from minidist.estimate.moe import moe_for_config
from minidist.parallel import ZeRO3
from minidist.testing import train_steps

pytestmark = [pytest.mark.moe, pytest.mark.timeout(120)]

SEQ, M, W = 8, 2, 8                       # tokens per sequence, micro-batches per step, float64 bytes
BASE = {"model": {"n_layer": 2, "n_embd": 8, "n_head": 2, "block_size": SEQ, "dropout": 0.1,
                  "moe": {"num_experts": 4, "top_k": 2, "capacity_factor": 0.75, "aux_loss_coef": 0.1,
                          "z_loss_coef": 0.01}},
        "data": {"dataset": "english", "seq_len": SEQ}, "steps": 2, "dtype": "float64",
        "gradient_accumulation_steps": M, "optimizer": {"type": "AdamW", "params": {"lr": 1e-2}}}
GLOBAL = 4                                # sequences per micro-step over all data-parallel ranks


def config(dp, pp=1, clip=0.0):
    cfg = copy.deepcopy(BASE)
    cfg["gradient_clipping"] = clip
    cfg["train_micro_batch_size_per_gpu"] = GLOBAL // dp
    cfg["model"]["moe"]["group_size"] = GLOBAL // dp * SEQ        # one group per rank and micro-batch
    cfg["parallel"] = {"expert": 2, "pipeline": pp, "schedule": "1f1b"}
    cfg["zero_optimization"] = {"stage": 3}
    return cfg


def one_rank(cfg):
    serial = copy.deepcopy(cfg)
    serial["train_micro_batch_size_per_gpu"] = GLOBAL
    serial["parallel"] = {"expert": 1}
    serial["zero_optimization"] = {"stage": 0}
    return train_steps(serial)


def relative(a, b):
    return max(float(np.max(np.abs(a[k] - b[k])) / np.max(np.abs(b[k]))) for k in b)


@pytest.mark.parametrize("pp,clip", [(1, 0.05), (2, 0.0)], ids=["ep2xdp2-clip", "ep2xdp2xpp2"])
def test_experts_partitioned_over_grid_dp_train_like_one_rank_and_hold_and_send_the_formulas(pp, clip):
    world, dp = 4 * pp, 4
    cfg = config(dp, pp, clip)
    ref = one_rank(cfg)
    runs = dist.spawn(train_steps, world, cfg, timeout=90)
    t0 = runs[0]["trainer"]
    est = estimate_for_config(t0.cfg, world, t0.model_config.vocab_size)
    for r in runs:
        tr, s = r["trainer"], r["trainer"].strategy
        for step, params in enumerate(r["params"]):
            assert relative(params, ref["params"][step]) <= 1e-9, (step, tr.rank)
        assert isinstance(s.dense, ZeRO3) and isinstance(s.experts, ZeRO3)
        assert (s.dense.world_size, s.experts.world_size) == (dp, dp // 2)
        # between steps a rank holds no whole parameter: its shards only
        assert all(p.data.size == 0 for p in tr.model.parameters())
        experts = [p.data.size for p in tr.model.parameters() if p.expert]
        psi_e = sum(int(np.prod(b.shapes[i])) for b in s.experts.buckets for i in range(len(b.params)))
        psi_d = sum(int(np.prod(b.shapes[i])) for b in s.dense.buckets for i in range(len(b.params)))
        assert len(experts) > 0 and psi_e % (dp // 2) == 0 and psi_d % dp == 0      # no padding in this model
        S_d, S_e = psi_d // dp, psi_e // (dp // 2)
        assert (s.dense.shard, s.experts.shard) == (S_d, S_e)
        formula = {"parameters": W * (S_d + S_e), "gradients": W * (S_d + S_e), "optimizer_states": 2 * W * (S_d + S_e)}
        e = est["ranks"][tr.grid.coords["pp"]]
        assert {k: r["model_states"][k] for k in formula} == formula == \
            {k: e["model_states"][k] for k in formula}, tr.rank
        if pp == 1:                              # the experts of the whole model: minidist.estimate.moe
            moe = moe_for_config(tr.cfg, world, SEQ)["model_states"]
            assert {k: moe[k] for k in formula} == {k: W * S_e * (2 if k == "optimizer_states" else 1) for k in formula}
        # the data-parallel collectives of each group: gathers in forward and backward, one reduce-scatter
        for part in s.parts:
            p = part.world_size
            sent = sum(c.bytes_sent for c in tr.step_log.collectives
                       if c.rank == tr.rank and c.group == part.comm.group and c.op in ("all_gather", "reduce_scatter"))
            want = (p - 1) * (3 * M * part.shard if pp == 1 else 2 * M * part.gathered_per_micro_batch() + part.shard)
            assert sent == want * W, (tr.rank, part.world_size)
        assert tr.history[-1]["bytes_sent"] == e["bytes_sent"]["total"], tr.rank
    n = len(ref["history"])
    losses = [np.mean([r["history"][s]["loss"] for r in runs]) * pp for s in range(n)]
    np.testing.assert_allclose(losses, [h["loss"] for h in ref["history"]], rtol=1e-9)
