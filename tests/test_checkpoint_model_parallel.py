"""Checkpoints of tensor- and pipeline-parallel runs (minidist.checkpoint): each rank saves
its tp slices or its stages' parameters, masters and moments as fragments of the one-rank
model's arrays; resuming with the same layout is bit for bit; loading onto another layout
(TP 2 → 1, PP 2 → 1, 1 → TP 2) continues within 1e-12 in float64; ``consolidate`` gives the
one-rank state dict (vocabulary padding removed); under mpirun the same as in-process."""
import json

import numpy as np
import pytest
from _mpi import run_mpi

from minidist.checkpoint import consolidate, read_checkpoint
from _checkpoint import assert_same_state, train

pytestmark = [pytest.mark.checkpoint, pytest.mark.tensor, pytest.mark.pipeline, pytest.mark.timeout(120)]

BASE = {"model": {"n_layer": 2, "n_embd": 16, "n_head": 2, "block_size": 8, "dropout": 0.1},
        "data": {"dataset": "english", "seq_len": 8}, "steps": 6, "eval_iters": 1,
        "train_micro_batch_size_per_gpu": 2}
ZERO1 = {"zero_optimization": {"stage": 1, "reduce_bucket_size": 700}}    # chunks cut tp slices mid-row
PIPE = {"gradient_accumulation_steps": 2}

LAYOUTS = {   # id: (ranks, extra config)
    "tp2": (2, {"parallel": {"tensor": 2, "make_vocab_size_divisible_by": 8}}),
    "tp2+sp": (2, {"parallel": {"tensor": 2, "sequence_parallel": True}}),
    "pp2_1f1b": (2, {"parallel": {"pipeline": 2, "schedule": "1f1b"}, **PIPE}),
    "pp2_zb_h1": (2, {"parallel": {"pipeline": 2, "schedule": "zb_h1"}, **PIPE}),
    "tp2xdp2_zero1": (4, {"parallel": {"tensor": 2}, **ZERO1}),
    "pp2xdp2_zero1": (4, {"parallel": {"pipeline": 2}, **PIPE, **ZERO1}),
    "fp16_tp2": (2, {"parallel": {"tensor": 2}, "fp16": {"enabled": True, "initial_scale_power": 24,
                                                          "hysteresis": 2, "loss_scale_window": 2}}),
}


def config(**extra):
    return {**BASE, **extra}


def losses(trainers):
    return [[h["loss"] for h in t.history] for t in trainers]


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_resume_is_bit_identical(tmp_path, layout):
    world, extra = LAYOUTS[layout]
    cfg = config(**extra)
    straight = train(cfg, world, save=tmp_path / "a", interval=3)
    resumed = train(cfg, world, save=tmp_path / "b", load=tmp_path / "a" / "step_00000003")
    assert losses(resumed) == losses(straight)                    # every rank's history, bit for bit
    assert [t.final for t in resumed] == [t.final for t in straight]
    assert_same_state(tmp_path / "a", tmp_path / "b")
    for a, b in zip(straight, resumed):                           # what each rank holds, too
        for (name, p), (_, q) in zip(a.model.named_parameters(), b.model.named_parameters()):
            assert np.array_equal(p.data, q.data), name
    manifest = read_checkpoint(tmp_path / "a").manifest
    assert manifest["layout"]["grid"] == {"dp": world // 2, **({"tp": 2, "pp": 1} if "tp" in layout
                                                               else {"tp": 1, "pp": 2})}
    if layout.startswith("fp16"):                                 # the scaler really moved
        assert len({h["loss_scale"] for h in straight[0].history}) > 2


def test_tensor_slices_are_fragments_of_the_full_arrays(tmp_path):
    """A tp rank's c_attn slice is three blocks (its heads of q, k and v); the vocabulary
    padding (75 → 80 rows) is not saved."""
    train(config(**LAYOUTS["tp2"][1], steps=1), 2, save=tmp_path / "ck")
    ckpt = read_checkpoint(tmp_path / "ck")
    frags = [f for meta in ckpt.metas for f in meta["fragments"]]
    c_attn = [f["slices"] for f in frags if f["name"] == "transformer.h.0.attn.c_attn.weight" and f["kind"] == "param"]
    assert sorted(c_attn) == sorted([[0, 16], [g * 16 + r * 8, g * 16 + r * 8 + 8]] for g in range(3) for r in range(2))
    wte = [f["slices"] for f in frags if f["name"] == "transformer.wte.weight" and f["kind"] == "param"]
    assert sorted(wte) == [[[0, 40], [0, 16]], [[40, 75], [0, 16]]]
    assert ckpt.universal["transformer.wte.weight"]["param"].shape == (75, 16)


RESHARD = {   # id: ((ranks, extra) saving, (ranks, extra) loading), the same global batch
    "tp2_to_1": ((2, {"parallel": {"tensor": 2, "make_vocab_size_divisible_by": 8}}), (1, {})),
    "pp2_to_1": ((2, {"parallel": {"pipeline": 2}, **PIPE}), (1, PIPE)),
    "1_to_tp2": ((1, {}), (2, {"parallel": {"tensor": 2, "sequence_parallel": True}})),
}


@pytest.mark.parametrize("case", list(RESHARD))
def test_reshard_continues_within_1e_12(tmp_path, case):
    (n0, extra0), (n1, extra1) = RESHARD[case]
    straight = train(config(dtype="float64", **extra0), n0, save=tmp_path / "a", interval=3)
    resumed = train(config(dtype="float64", **extra1), n1, save=tmp_path / "b", load=tmp_path / "a" / "step_00000003")
    want = [h["loss"] for h in straight[0].history] if "pp2" not in case else \
        [h["loss"] for h in straight[-1].history]                # the last stage's rank measured them
    np.testing.assert_allclose([h["loss"] for h in resumed[-1].history], want, rtol=0, atol=1e-12)
    assert_same_state(tmp_path / "a", tmp_path / "b", atol=1e-12)


@pytest.mark.parametrize("layout", ["tp2", "pp2_1f1b"])
def test_consolidate_equals_one_rank_state_dict(tmp_path, layout):
    world, extra = LAYOUTS[layout]
    train(config(dtype="float64", **extra), world, save=tmp_path / "ck")
    state = consolidate(str(tmp_path / "ck"), str(tmp_path / "full.npz"))
    single = train(config(dtype="float64", **({"gradient_accumulation_steps": 2} if "pp" in layout else {})),
                   1)[0].model.state_dict()
    assert state.keys() == single.keys()
    for name, value in single.items():
        assert state[name].shape == value.shape, name                 # (75, 16): padding removed
        np.testing.assert_allclose(state[name], value, rtol=0, atol=1e-12, err_msg=name)


def test_mpirun_pipeline_resume_equals_in_process(tmp_path):
    cfg = config(**LAYOUTS["pp2_1f1b"][1])
    path = tmp_path / "config.json"
    path.write_text(json.dumps(cfg))
    for flags in (["--save", tmp_path / "mpi", "--save-interval", "3"],
                  ["--save", tmp_path / "resumed", "--load", tmp_path / "mpi" / "step_00000003"]):
        p = run_mpi(2, ["-m", "minidist.train", "--config", path, "--quiet", *flags], timeout=100)
        assert p.returncode == 0, p.stderr[-3000:]
    train(cfg, 2, save=tmp_path / "inproc")
    assert_same_state(tmp_path / "inproc", tmp_path / "mpi")
    assert_same_state(tmp_path / "inproc", tmp_path / "resumed")
    assert read_checkpoint(tmp_path / "resumed").manifest["losses"] == \
        read_checkpoint(tmp_path / "inproc").manifest["losses"]
