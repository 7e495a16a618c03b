"""Megatron's asynchronous tensor-parallel backward (``parallel.tp_comm_overlap``): under TP the
all-reduce of a column-parallel layer's dX travels while dW computes; under TP + SP the
all-gather of the input travels while dX computes and the reduce-scatter of dX while dW
computes. Every number is bit-identical to overlap off — losses, weights, bytes — and the
simulated step is shorter, by no more than the time those collectives take."""
import copy

import numpy as np
import pytest

from minidist import distributed as dist
from minidist.testing import train_steps

pytestmark = [pytest.mark.tensor, pytest.mark.checkpointing, pytest.mark.timeout(120)]

BASE = {"model": {"n_layer": 2, "n_embd": 64, "n_head": 4, "block_size": 16, "dropout": 0.1},
        "data": {"dataset": "english", "seq_len": 16}, "steps": 2, "eval_iters": 1,
        "train_micro_batch_size_per_gpu": 4, "gradient_accumulation_steps": 2}
DEVICE = {"flops": 1e10, "alpha": 1e-6, "beta": 1e9}   # a matmul and a collective take comparable time


def config(overlap, sp, **extra):
    cfg = copy.deepcopy(BASE)
    cfg["parallel"] = {"tensor": 2, "sequence_parallel": sp, "tp_comm_overlap": overlap}
    cfg.update(extra)
    return cfg


def step_time(run) -> float:
    h = run["history"]
    return h[-1]["sim_time"] - h[-2]["sim_time"]


@pytest.mark.parametrize("sp", [False, True], ids=["tp2", "tp2+sp"])
@pytest.mark.parametrize("fmt", ["fp32", "bf16"])
def test_overlap_changes_only_the_clock(sp, fmt):
    extra = {"bf16": {"enabled": True}} if fmt == "bf16" else {}
    on = dist.spawn(train_steps, 2, config(True, sp, **extra), device=DEVICE)
    off = dist.spawn(train_steps, 2, config(False, sp, **extra), device=DEVICE)
    for a, b in zip(on, off):
        assert [h["loss"] for h in a["history"]] == [h["loss"] for h in b["history"]]
        assert [h["bytes_sent"] for h in a["history"]] == [h["bytes_sent"] for h in b["history"]]
        for pa, pb in zip(a["params"], b["params"]):
            assert all(np.array_equal(pa[k], pb[k]) for k in pb)
        saved = step_time(b) - step_time(a)
        comm = sum(x.t_end - x.t_start for x in b["trainer"].step_log.collectives
                   if x.group == b["trainer"].grid.tp.group)
        assert 0 < saved <= comm, (saved, comm)


def test_overlap_under_the_zero_bubble_split_backward_is_bit_identical():
    """B alone computes dX (nothing to hide it under); W alone dW: the values still agree."""
    par = {"pipeline": 2, "schedule": "zb_h1"}
    on = dist.spawn(train_steps, 4, config(True, True, gradient_accumulation_steps=4,
                                           parallel={"tensor": 2, "sequence_parallel": True,
                                                     "tp_comm_overlap": True, **par}, model={**BASE["model"], "n_layer": 4}))
    off = dist.spawn(train_steps, 4, config(False, True, gradient_accumulation_steps=4,
                                            parallel={"tensor": 2, "sequence_parallel": True, **par},
                                            model={**BASE["model"], "n_layer": 4}))
    for a, b in zip(on, off):
        for pa, pb in zip(a["params"], b["params"]):
            assert all(np.array_equal(pa[k], pb[k]) for k in pb)
