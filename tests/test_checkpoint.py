"""Checkpoints (minidist.checkpoint): straight 6 steps == 3 steps + save + load + 3 steps, bit for bit,
for every data-parallel layout and precision; resharding onto another world size / ZeRO
stage; consolidation equals the one-rank model's state dict."""
import numpy as np
import pytest

from minidist.checkpoint import consolidate
from _checkpoint import assert_same_state, train

pytestmark = [pytest.mark.checkpoint, pytest.mark.timeout(120)]

BASE = {"model": {"n_layer": 2, "n_embd": 16, "n_head": 2, "block_size": 8},
        "data": {"dataset": "copy", "n_digits": 3}, "steps": 6, "eval_iters": 1,
        "train_micro_batch_size_per_gpu": 2}
SMALL_BUCKETS = {"reduce_bucket_size": 700, "allgather_bucket_size": 1500}   # several buckets, chunks cut params

LAYOUTS = {
    "ddp": {},
    "parameter_server": {"parallel": {"data_parallel": "parameter_server"}},
    "zero1": {"zero_optimization": {"stage": 1, **SMALL_BUCKETS}},
    "zero2": {"zero_optimization": {"stage": 2, **SMALL_BUCKETS}, "gradient_accumulation_steps": 2},
    "zero3": {"zero_optimization": {"stage": 3}},
    "offload": {"zero_optimization": {"stage": 2, "offload_optimizer": {"device": "cpu"}, **SMALL_BUCKETS}},
    # a first scale that overflows: skipped steps and hysteresis are part of what must resume
    "fp16_zero1": {"fp16": {"enabled": True, "initial_scale_power": 24, "hysteresis": 2, "loss_scale_window": 2},
                   "zero_optimization": {"stage": 1, **SMALL_BUCKETS}},
    "fp16_ddp": {"fp16": {"enabled": True, "initial_scale_power": 24}},
    "bf16_zero3": {"bf16": {"enabled": True}, "zero_optimization": {"stage": 3}},
    "fp16_offload": {"fp16": {"enabled": True}, "zero_optimization": {"stage": 3, "offload_optimizer": {"device": "cpu"}}},
    "sgd_momentum_zero2": {"optimizer": {"type": "SGD", "params": {"lr": 0.1, "momentum": 0.9}},
                           "zero_optimization": {"stage": 2, **SMALL_BUCKETS}},
}


def config(**extra):
    cfg = {**BASE, **extra}
    return cfg


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_resume_is_bit_identical(tmp_path, layout):
    cfg = config(**LAYOUTS[layout])
    straight = train(cfg, 2, save=tmp_path / "a", interval=3)
    assert (tmp_path / "a" / "latest").read_text().strip() == "step_00000006"
    resumed = train(cfg, 2, save=tmp_path / "b", load=tmp_path / "a" / "step_00000003")
    assert [h["loss"] for h in resumed[0].history] == [h["loss"] for h in straight[0].history]
    assert [h["loss_scale"] for h in resumed[0].history] == [h["loss_scale"] for h in straight[0].history]
    assert resumed[0].final == straight[0].final
    assert_same_state(tmp_path / "a", tmp_path / "b")
    if "fp16_zero1" == layout:      # the scaler really moved: skipped steps before and after the save
        skipped = [h["skipped"] for h in straight[0].history]
        assert any(skipped[:3]) and len(set(h["loss_scale"] for h in straight[0].history)) > 2


def test_resume_single_rank_float64_with_dropout(tmp_path):
    cfg = config(dtype="float64", model={**BASE["model"], "dropout": 0.1})
    straight = train(cfg, 1, save=tmp_path / "a", interval=2)
    resumed = train(cfg, 1, save=tmp_path / "b", load=tmp_path / "a" / "step_00000004")
    assert [h["loss"] for h in resumed[0].history] == [h["loss"] for h in straight[0].history]
    assert [h["sim_time"] for h in resumed[0].history] == [h["sim_time"] for h in straight[0].history]
    assert_same_state(tmp_path / "a", tmp_path / "b")


@pytest.mark.parametrize("before, after", [
    ((4, {"zero_optimization": {"stage": 2, **SMALL_BUCKETS}}), (2, {"zero_optimization": {"stage": 2}})),
    ((2, {"zero_optimization": {"stage": 3}}), (2, {"zero_optimization": {"stage": 1, **SMALL_BUCKETS}})),
    ((2, {}), (3, {"zero_optimization": {"stage": 3}})),
    ((3, {"zero_optimization": {"stage": 1, "offload_optimizer": {"device": "cpu"}}}), (1, {})),
], ids=["4to2_zero2", "zero3_to_zero1", "ddp_2_to_zero3_3", "offload_3_to_single"])
def test_reshard_continues_within_1e_12(tmp_path, before, after):
    """Another world size or ZeRO stage continues the same trajectory (float64: only the
    order of the reductions differs). The global batch is kept: micro × world = 12."""
    (n0, extra0), (n1, extra1) = before, after
    straight = train(config(dtype="float64", train_micro_batch_size_per_gpu=12 // n0, **extra0), n0,
                     save=tmp_path / "a", interval=3)
    resumed = train(config(dtype="float64", train_micro_batch_size_per_gpu=12 // n1, **extra1), n1,
                    save=tmp_path / "b", load=tmp_path / "a" / "step_00000003")
    a = [h["loss"] for h in straight[0].history]
    b = [h["loss"] for h in resumed[0].history]
    np.testing.assert_allclose(b, a, rtol=0, atol=1e-12)
    assert_same_state(tmp_path / "a", tmp_path / "b", atol=1e-12)


def test_consolidate_equals_one_rank_state_dict(tmp_path):
    cfg = config(dtype="float64", zero_optimization={"stage": 3})
    train(cfg, 2, save=tmp_path / "z3")
    state = consolidate(str(tmp_path / "z3"), str(tmp_path / "full.npz"))
    on_disk = dict(np.load(tmp_path / "full.npz"))
    single = train(config(dtype="float64", train_micro_batch_size_per_gpu=4), 1)[0].model.state_dict()
    assert state.keys() == on_disk.keys() == single.keys()
    for name, value in single.items():
        assert np.array_equal(on_disk[name], state[name])
        np.testing.assert_allclose(state[name], value, rtol=0, atol=1e-12, err_msg=name)
    # and a one-rank checkpoint consolidates to exactly its model's state dict
    one = train(config(dtype="float64", train_micro_batch_size_per_gpu=4), 1, save=tmp_path / "one")[0]
    exact = consolidate(str(tmp_path / "one"), str(tmp_path / "one.npz"))
    assert all(np.array_equal(exact[n], v) for n, v in one.model.state_dict().items())


def test_consolidate_mixed_precision_gives_fp32_masters(tmp_path):
    cfg = config(bf16={"enabled": True}, zero_optimization={"stage": 2})
    trainers = train(cfg, 2, save=tmp_path / "ck")
    state = consolidate(str(tmp_path / "ck"), str(tmp_path / "full.npz"))
    model = trainers[0].model.state_dict()           # bf16 values: the masters rounded
    from minidist.numerics.quantize import quantize
    for name, master in state.items():
        assert master.dtype == np.float32
        assert np.array_equal(quantize(master, "bf16"), model[name]), name
    assert any(not np.array_equal(state[n], model[n]) for n in state)   # the masters carry more bits


def test_consolidate_refuses_to_write_inside_the_checkpoint_it_reads(tmp_path, capsys):
    """An output path inside the checkpoint (a shard, the manifest) was written over: the
    checkpoint was then reported truncated. It is refused, naming the way out."""
    import os

    from minidist.checkpoint.__main__ import main
    train(config(), 1, save=tmp_path / "c")
    step = sorted(d for d in os.listdir(tmp_path / "c") if d.startswith("step_"))[-1]
    shard = tmp_path / "c" / step / "rank_00000.npz"
    before = shard.read_bytes()
    assert main(["consolidate", str(tmp_path / "c"), str(shard)]) == 2
    assert "inside the checkpoint being read" in capsys.readouterr().err
    assert shard.read_bytes() == before
    assert main(["consolidate", str(tmp_path / "c"), str(tmp_path / "full.npz")]) == 0
