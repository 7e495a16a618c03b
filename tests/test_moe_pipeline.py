"""Mixture of experts under pipeline parallelism: every chunk's MoE aux and z losses join the
step's loss where they are computed (on the last chunk added to its loss, on the others carried
by the backward of the chunk's output, Megatron's MoEAuxLossAutoScaler), so 1F1B, ZB-V (B/W
split) and DualPipeV — with expert parallelism and the overlapped F&B pairs — train like one
rank with the same groups (float64, relative ≤ 1e-9), the loss summed over the stages included, and
every stage records its MoE layers' load per expert and drops (summed over the ranks: one rank's)."""
import numpy as np
import pytest

from minidist import distributed as dist
from minidist.testing import train_steps

pytestmark = [pytest.mark.pipeline, pytest.mark.moe, pytest.mark.timeout(60)]


def config(micro, par=None):
    return {"model": {"n_layer": 4, "n_embd": 8, "n_head": 2, "block_size": 8,
                      "moe": {"num_experts": 4, "top_k": 2, "capacity_factor": 1.0, "aux_loss_coef": 0.1,
                              "z_loss_coef": 0.01, "group_size": 7, "every_n_layers": 2}},
            "data": {"dataset": "copy", "n_digits": 3, "seq_len": 7}, "dtype": "float64",
            "train_micro_batch_size_per_gpu": micro, "gradient_accumulation_steps": 4, "steps": 1,
            "optimizer": {"type": "Adam", "params": {"lr": 1e-2}}, "parallel": par or {}}


@pytest.mark.parametrize("par,world", [
    ({"pipeline": 2, "schedule": "1f1b"}, 2),
    ({"pipeline": 2, "schedule": "zb_v", "expert": 2}, 4),
    ({"pipeline": 2, "schedule": "dualpipe_v", "expert": 2, "overlap_f_b": True}, 4),
], ids=["1f1b", "zb_v+ep2", "dualpipe_v+ep2+overlap"])
def test_moe_under_a_pipeline_trains_like_one_rank(par, world):
    dp = world // 2
    ref = train_steps(None, config(2 * dp))              # one rank, the same global batch and groups of 7
    runs = dist.spawn(train_steps, world, config(2, par))
    for step, want in enumerate(ref["history"]):
        # each stage's history holds its part of the loss (the last: LM + its MoE losses)
        got = sum(r["history"][step]["loss"] for r in runs) / dp
        assert abs(got - want["loss"]) <= 1e-9 * abs(want["loss"]), (step, got, want["loss"])
        for r in runs:
            for name, value in r["params"][step].items():
                np.testing.assert_allclose(value, ref["params"][step][name], rtol=1e-9, atol=1e-12, err_msg=name)
        load: dict = {}                                  # every rank's groups' load per expert, summed
        for r in runs:
            for layer, x in r["history"][step]["moe"].items():
                acc = load.setdefault(layer, {"load": [0] * 4, "dropped": 0})
                acc["load"] = [a + b for a, b in zip(acc["load"], x["load"])]
                acc["dropped"] += x["dropped"]
        assert load == want["moe"]
    aux = [r["trainer"].pipeline.steps[-1]["moe_losses"] for r in runs]
    assert any(a > 0 for a in aux)                       # the first stage's MoE layers really contributed
