"""Checkpoints of a 3D run (DP2 × TP2 × PP2 on 8 ranks): every rank saves its stages' tp
slices as fragments of the one-rank arrays; resuming the same layout continues bit for bit;
loading onto one rank, or onto another layout, continues within 1e-12 in float64; a run under
``mpirun -n 8`` saves the same checkpoint as the in-process run."""
import json

import numpy as np
import pytest
from _mpi import run_mpi

from _checkpoint import assert_same_state, train
from minidist.checkpoint import consolidate, read_checkpoint

pytestmark = [pytest.mark.checkpoint, pytest.mark.grid, pytest.mark.timeout(180)]

BASE = {"model": {"n_layer": 4, "n_embd": 16, "n_head": 4, "block_size": 8, "dropout": 0.1},
        "data": {"dataset": "english", "seq_len": 8}, "steps": 4, "eval_iters": 1,
        "gradient_accumulation_steps": 2}
GLOBAL_MICRO = 4


def layout(dp, tp, pp, **extra):
    par = {"tensor": tp, "pipeline": pp, "sequence_parallel": tp > 1, "make_vocab_size_divisible_by": 8}
    return {**BASE, "train_micro_batch_size_per_gpu": GLOBAL_MICRO // dp, "parallel": par, **extra}


ZERO1 = {"zero_optimization": {"stage": 1, "reduce_bucket_size": 500}}    # chunks cut tp slices mid-row


def last_stage_losses(trainers):
    """The losses of the run: every rank's history holds the job's mean after the run."""
    return [h["loss"] for h in trainers[0].history]


def test_3d_resume_is_bit_identical(tmp_path):
    cfg = layout(2, 2, 2, **ZERO1)
    straight = train(cfg, 8, save=tmp_path / "a", interval=2)
    resumed = train(cfg, 8, save=tmp_path / "b", load=tmp_path / "a" / "step_00000002")
    assert [[h["loss"] for h in t.history] for t in resumed] == [[h["loss"] for h in t.history] for t in straight]
    assert_same_state(tmp_path / "a", tmp_path / "b")
    for a, b in zip(straight, resumed):                       # what each rank holds, bit for bit
        for (name, p), (_, q) in zip(a.model.named_parameters(), b.model.named_parameters()):
            assert np.array_equal(p.data, q.data), name
    assert read_checkpoint(tmp_path / "a").manifest["layout"]["grid"] == {"dp": 2, "tp": 2, "pp": 2}


@pytest.mark.parametrize("target", [(1, 1, 1), (1, 2, 2), (4, 1, 2)], ids=["to_1", "to_tp2xpp2", "to_dp4xpp2"])
def test_3d_reshards_to_another_layout_within_1e_12(tmp_path, target):
    straight = train(layout(2, 2, 2, dtype="float64", **ZERO1), 8, save=tmp_path / "a", interval=2)
    dp, tp, pp = target
    resumed = train(layout(dp, tp, pp, dtype="float64"), dp * tp * pp, save=tmp_path / "b",
                    load=tmp_path / "a" / "step_00000002")
    np.testing.assert_allclose(last_stage_losses(resumed), last_stage_losses(straight), rtol=0, atol=1e-12)
    assert_same_state(tmp_path / "a", tmp_path / "b", atol=1e-12)


def test_3d_consolidates_to_the_one_rank_state_dict(tmp_path):
    train(layout(2, 2, 2, dtype="float64"), 8, save=tmp_path / "ck")
    state = consolidate(str(tmp_path / "ck"), str(tmp_path / "full.npz"))
    single = train(layout(1, 1, 1, dtype="float64"), 1)[0].model.state_dict()
    assert state.keys() == single.keys()
    for name, value in single.items():
        assert state[name].shape == value.shape, name               # vocabulary padding removed
        np.testing.assert_allclose(state[name], value, rtol=0, atol=1e-12, err_msg=name)


def test_mpirun_8_ranks_3d_equals_in_process(tmp_path):
    cfg = layout(2, 2, 2, **ZERO1, steps=2)
    path = tmp_path / "config.json"
    path.write_text(json.dumps(cfg))
    p = run_mpi(8, ["-m", "minidist.train", "--config", path, "--quiet", "--save", tmp_path / "mpi"], timeout=150)
    assert p.returncode == 0, p.stderr[-3000:]
    train(cfg, 8, save=tmp_path / "inproc")
    assert_same_state(tmp_path / "inproc", tmp_path / "mpi")
    assert read_checkpoint(tmp_path / "mpi").manifest["losses"] == read_checkpoint(tmp_path / "inproc").manifest["losses"]


def test_a_context_parallel_checkpoint_counts_its_global_batch_without_the_cp_ranks(tmp_path):
    """CP ranks share sequences, they are no data-parallel ranks: a TP2 × CP2 run on 4 ranks
    with micro-batch 4 trains on 4·2 = 8 sequences a step. It resumes on one rank with micro-batch
    4 (within 1e-12 in float64), and a resume on 2 data-parallel ranks of micro-batch 4 (16
    sequences: another trajectory) is refused."""
    from minidist.checkpoint import CheckpointError, check_compatible
    from minidist.training.config import load_config
    one = {**BASE, "dtype": "float64", "train_micro_batch_size_per_gpu": 4}
    cp = {**one, "parallel": {"tensor": 2, "sequence_parallel": True, "context": {"size": 2}},
          "zero_optimization": {"stage": 2}}
    straight = train(cp, 4, save=tmp_path / "a", interval=2)
    ckpt = read_checkpoint(tmp_path / "a" / "step_00000002")
    check_compatible(ckpt, load_config(one, 1), 1)
    with pytest.raises(CheckpointError, match="global batch of 8 sequences .* this run's is 16"):
        check_compatible(ckpt, load_config(one, 2), 2)
    resumed = train(one, 1, load=tmp_path / "a" / "step_00000002")
    np.testing.assert_allclose([h["loss"] for h in resumed[0].history][2:],
                               [h["loss"] for h in straight[0].history][2:], rtol=1e-12)


def test_another_split_of_the_same_global_batch_is_refused_naming_the_accumulation(tmp_path):
    """Micro-step j of step s draws its data for s·k + j (k = gradient_accumulation_steps), so
    micro-batch 4 × 2 micro-steps is not micro-batch 8 × 1 after a resume, though both are 8
    sequences a step: the resumed run followed neither (4.2988 at step 3 against 4.2858 and
    4.2897). It is refused, naming the key; the same split resumes within 1e-12."""
    from minidist.checkpoint import CheckpointError, check_compatible
    from minidist.training.config import load_config
    eight = {**BASE, "dtype": "float64", "train_micro_batch_size_per_gpu": 8, "gradient_accumulation_steps": 1}
    straight = train(eight, 1, save=tmp_path / "a", interval=2)
    ckpt = read_checkpoint(tmp_path / "a" / "step_00000002")
    split = {**eight, "train_micro_batch_size_per_gpu": 4, "gradient_accumulation_steps": 2}
    with pytest.raises(CheckpointError, match="gradient_accumulation_steps = 1 to resume"):
        check_compatible(ckpt, load_config(split, 1), 1)
    resumed = train({**eight, "train_micro_batch_size_per_gpu": 4}, 2, load=tmp_path / "a" / "step_00000002")
    np.testing.assert_allclose([h["loss"] for h in resumed[0].history][2:],
                               [h["loss"] for h in straight[0].history][2:], rtol=1e-12)
