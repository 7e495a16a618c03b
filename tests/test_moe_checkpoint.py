"""Checkpoints of a mixture of experts: resuming continues bit for bit, on one rank and under
expert parallelism (each ep rank saves its experts, the rest is saved as its data-parallel
layout saves it; ZeRO-3 included, its experts' shards over grid.dp); an expert-parallel
checkpoint loads on one rank, which then trains on like the expert-parallel job (float64, the
same groups)."""
import copy

import numpy as np
import pytest

from minidist.checkpoint import load_into, read_checkpoint
from minidist.training.trainer import Trainer

from _checkpoint import assert_same_state, train

pytestmark = [pytest.mark.moe, pytest.mark.checkpoint, pytest.mark.timeout(120)]

CONFIG = {"model": {"n_layer": 2, "n_embd": 16, "n_head": 2, "block_size": 8, "dropout": 0.1,
                    "moe": {"num_experts": 4, "top_k": 2, "capacity_factor": 1.0, "group_size": 16}},
          "data": {"dataset": "english", "seq_len": 8}, "steps": 4, "eval_iters": 1, "dtype": "float64",
          "train_micro_batch_size_per_gpu": 2}


@pytest.mark.parametrize("world,ep,stage", [(1, 1, 0), (2, 2, 0), (4, 2, 2), (4, 2, 3)],
                         ids=["one-rank", "ep2", "ep2-dp2-zero2", "ep2-dp2-zero3"])
def test_resuming_a_mixture_of_experts_is_bit_for_bit(tmp_path, world, ep, stage):
    cfg = copy.deepcopy(CONFIG)
    cfg["parallel"], cfg["zero_optimization"] = {"expert": ep}, {"stage": stage}
    straight = train(cfg, world, save=tmp_path / "a", interval=2)
    resumed = train(cfg, world, save=tmp_path / "b", load=tmp_path / "a" / "step_00000002")
    assert [h["loss"] for h in resumed[0].history] == [h["loss"] for h in straight[0].history]
    assert_same_state(tmp_path / "a", tmp_path / "b")


def test_an_expert_parallel_checkpoint_loads_on_one_rank_and_trains_on_alike(tmp_path):
    cfg = copy.deepcopy(CONFIG)
    cfg["parallel"], cfg["zero_optimization"] = {"expert": 2}, {"stage": 1}
    job = train(cfg, 4, save=tmp_path / "a", interval=2)
    one = copy.deepcopy(CONFIG)
    one["train_micro_batch_size_per_gpu"] = 8                       # the same global batch, groups of 16 tokens
    ckpt = read_checkpoint(tmp_path / "a" / "step_00000002")
    trainer = Trainer(one)
    load_into(trainer, ckpt)
    for name, value in trainer.full_parameters().items():
        assert np.array_equal(value, ckpt.universal[name]["param"]), name
    for step in (2, 3):
        trainer.train_step(step)
    want = [h["loss"] for h in job[0].history][2:]
    np.testing.assert_allclose([h["loss"] for h in trainer.history][2:], want, rtol=1e-9)


def test_a_mixture_of_experts_checkpoint_refuses_other_routing_or_another_model(tmp_path):
    """The model.moe keys are checked as the model's other keys are: the experts' number and
    placement make the model (weights-only loads refuse them too), the routing (top_k, capacity,
    the losses' coefficients, the groups) makes the trajectory (a resume refuses it)."""
    from minidist.checkpoint import CheckpointError, check_compatible
    from minidist.training.config import load_config
    train(CONFIG, 1, save=tmp_path / "a", interval=2)
    ckpt = read_checkpoint(tmp_path / "a" / "step_00000002")
    check_compatible(ckpt, load_config(copy.deepcopy(CONFIG)), 1)              # the same config: accepted
    for key, value in [("top_k", 1), ("capacity_factor", 2.0), ("aux_loss_coef", 0.5), ("group_size", 8)]:
        cfg = copy.deepcopy(CONFIG)
        cfg["model"]["moe"][key] = value
        with pytest.raises(CheckpointError, match=f"'model.moe.{key}' = .*but this run has {value}; use the saved "
                                                  f"value to resume; to start a new run from its weights only"):
            check_compatible(ckpt, load_config(cfg), 1)
        check_compatible(ckpt, load_config(cfg), 1, weights_only=True)          # the same weights: they load
    dense = copy.deepcopy(CONFIG)
    del dense["model"]["moe"]
    for weights_only in (False, True):
        with pytest.raises(CheckpointError, match=r"'model.moe.num_experts' = 4, but this run has nothing "
                                                  r"\(no model.moe section\); use the saved value \(the model must"):
            check_compatible(ckpt, load_config(dense), 1, weights_only=weights_only)
    fewer = copy.deepcopy(CONFIG)
    fewer["model"]["moe"]["every_n_layers"] = 2
    with pytest.raises(CheckpointError, match="'model.moe.every_n_layers' = 1, but this run has 2"):
        check_compatible(ckpt, load_config(fewer), 1, weights_only=True)
