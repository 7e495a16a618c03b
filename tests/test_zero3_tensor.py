"""ZeRO-3 with tensor parallelism: each tp rank's slices partitioned over its data-parallel group
(DP 2 × TP 2 with sequence parallelism on 4 ranks, DP 2 × TP 2 × PP 2 on 8): the same weights as
one rank on the same global batch after every step (float64, relative ≤ 1e-9, with clipping);
every rank's model states and bytes sent per step equal minidist.estimate.grid3d's; a 3D ZeRO-3
checkpoint resumes bit for bit and reshards to one rank within 1e-12."""
import copy

import numpy as np
import pytest

from _checkpoint import assert_same_state, train
from minidist import distributed as dist
from minidist.estimate.grid3d import estimate_for_config
from minidist.testing import train_steps

pytestmark = [pytest.mark.zero, pytest.mark.tensor, pytest.mark.timeout(120)]

GLOBAL_MICRO, M = 4, 2
BASE = {"model": {"n_layer": 2, "n_embd": 8, "n_head": 2, "block_size": 8, "dropout": 0.1},
        "data": {"dataset": "english", "seq_len": 8}, "dtype": "float64", "steps": 2, "eval_iters": 1,
        "optimizer": {"type": "AdamW", "params": {"lr": 1e-2}}, "gradient_clipping": 0.05,
        "gradient_accumulation_steps": M}


def config(tp, pp, sp, **extra):
    par = {"tensor": tp, "pipeline": pp, "sequence_parallel": sp, "make_vocab_size_divisible_by": 8}
    return {**copy.deepcopy(BASE), "parallel": par, "zero_optimization": {"stage": 3},
            "train_micro_batch_size_per_gpu": GLOBAL_MICRO // 2, **extra}


def one_rank(**extra):
    return {**copy.deepcopy(BASE), "train_micro_batch_size_per_gpu": GLOBAL_MICRO, **extra}


@pytest.mark.parametrize("tp,pp,sp", [(2, 1, True), (2, 2, False)], ids=["dp2xtp2-sp", "dp2xtp2xpp2"])
def test_equals_one_rank_and_the_estimate_on_every_rank(tp, pp, sp):
    world = 2 * tp * pp
    runs = dist.spawn(train_steps, world, config(tp, pp, sp), timeout=90)
    ref = train_steps(one_rank())
    t0 = runs[0]["trainer"]
    est = estimate_for_config(t0.cfg, world, t0.model_config.vocab_size)
    for r in runs:
        tr = r["trainer"]
        for step, params in enumerate(r["params"]):
            want = ref["params"][step]
            rel = max(float(np.max(np.abs(params[k] - want[k])) / np.max(np.abs(want[k]))) for k in want)
            assert rel <= 1e-9, (step, tr.rank, rel)
        e = est["ranks"][tr.grid.coords["pp"]]
        s, w = tr.strategy, 8
        assert {k: r["model_states"][k] for k in ("parameters", "gradients", "optimizer_states")} == \
            {k: e["model_states"][k] for k in ("parameters", "gradients", "optimizer_states")} == \
            {"parameters": w * s.shard, "gradients": w * s.shard, "optimizer_states": 2 * w * s.shard}
        assert tr.history[-1]["bytes_sent"] == e["bytes_sent"]["total"], tr.rank
        dp = sum(c.bytes_sent for c in tr.step_log.collectives
                 if c.group == s.comm.group and c.op in ("all_gather", "reduce_scatter"))
        # without a pipeline 3·m collectives of the shard (every micro-step reduce-scatters), else 2·m·G + S
        assert dp == e["bytes_sent"]["data_parallel"] == ((2 * M * s.gathered_per_micro_batch() + s.shard) * w
                                                          if pp > 1 else 3 * M * s.shard * w)


@pytest.mark.checkpoint
def test_3d_checkpoint_resumes_bit_for_bit_and_reshards_to_one_rank(tmp_path):
    cfg = config(2, 2, True, steps=3)
    straight = train(cfg, 8, save=tmp_path / "a", interval=2)
    resumed = train(cfg, 8, save=tmp_path / "b", load=tmp_path / "a" / "step_00000002")
    assert [[h["loss"] for h in t.history] for t in resumed] == [[h["loss"] for h in t.history] for t in straight]
    assert_same_state(tmp_path / "a", tmp_path / "b")
    single = train(one_rank(steps=3), 1, save=tmp_path / "c", load=tmp_path / "a" / "step_00000002")
    np.testing.assert_allclose([h["loss"] for h in single[0].history], [h["loss"] for h in straight[0].history],
                               rtol=0, atol=1e-12)
    assert_same_state(tmp_path / "a", tmp_path / "c", atol=1e-12)
