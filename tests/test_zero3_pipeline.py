"""ZeRO-3 over the data-parallel group of every pipeline stage (DP 2 × PP 2 on 4 ranks): each
stage's parameters partitioned over its dp ranks, gathered for every micro-batch's forward and
backward, released after; gradients reduce-scattered once per step, after the flush.

* float64: the same weights as one rank on the same global batch after every step (relative
  ≤ 1e-9), under every schedule of the pipeline package, with clipping — the tied embedding's
  two copies summed;
* memory and traffic against the formulas, on every rank: model states (w + w + K)·S at the
  step; bytes on ``grid.dp`` (dp−1)·(2·m·G + S)·w, i.e. 2·m all-gathers of every unit a rank's
  chunks run and one reduce-scatter (m = 2 and 4, so that a wrong factor of m fails); the
  estimator's per-rank rows (and ``python -m minidist.estimate --pp 2 --dp 2 --zero 3``) and the
  report's layout rows equal the measured totals;
* checkpoints: resume bit for bit, reshard to one rank within 1e-12;
* ``mpirun -n 4`` saves the same checkpoint as the in-process ranks."""
import copy
import json

import numpy as np
import pytest
from _mpi import run_mpi

from _checkpoint import assert_same_state, train
from minidist import distributed as dist
from minidist.checkpoint import read_checkpoint
from minidist.defaults import SCHEDULES
from minidist.estimate.cli import main as estimate_main
from minidist.estimate.grid3d import estimate_3d, estimate_for_config
from minidist.testing import train_steps

pytestmark = [pytest.mark.zero, pytest.mark.pipeline, pytest.mark.timeout(120)]

GLOBAL_MICRO = 4
MODEL = {"n_layer": 4, "n_embd": 8, "n_head": 2, "block_size": 8, "dropout": 0.1}
BASE = {"model": MODEL, "data": {"dataset": "english", "seq_len": 8}, "dtype": "float64", "steps": 2,
        "eval_iters": 1, "optimizer": {"type": "AdamW", "params": {"lr": 1e-2}}, "gradient_clipping": 0.05}


def config(schedule="1f1b", m=2, **extra):
    par = {"pipeline": 2, "schedule": schedule, "virtual_stages": 2 if schedule == "interleaved_1f1b" else 1}
    return {**copy.deepcopy(BASE), "parallel": par, "zero_optimization": {"stage": 3},
            "gradient_accumulation_steps": m, "train_micro_batch_size_per_gpu": GLOBAL_MICRO // 2, **extra}


_REFERENCE = {}


def reference(m):
    if m not in _REFERENCE:
        _REFERENCE[m] = train_steps({**copy.deepcopy(BASE), "gradient_accumulation_steps": m,
                                     "train_micro_batch_size_per_gpu": GLOBAL_MICRO})
    return _REFERENCE[m]


def dp_bytes(trainer) -> int:
    """What this rank sent on grid.dp in the last step: the all-gathers and reduce-scatters."""
    group = trainer.strategy.comm.group
    return sum(c.bytes_sent for c in trainer.step_log.collectives
               if c.group == group and c.op in ("all_gather", "reduce_scatter"))


@pytest.mark.parametrize("schedule,m", [(s, 4 if s in ("1f1b", "dualpipe_v") else 2) for s in SCHEDULES])
def test_every_schedule_equals_one_rank_and_the_formulas(schedule, m):
    runs = dist.spawn(train_steps, 4, config(schedule, m), timeout=60)
    ref = reference(m)
    t0 = runs[0]["trainer"]
    est = estimate_for_config(t0.cfg, 4, t0.model_config.vocab_size)
    for r in runs:
        tr = r["trainer"]
        for step, params in enumerate(r["params"]):
            want = ref["params"][step]
            rel = max(float(np.max(np.abs(params[k] - want[k])) / np.max(np.abs(want[k]))) for k in want)
            assert rel <= 1e-9, (schedule, step, tr.rank, rel)
        s = tr.strategy
        G, S, w = s.gathered_per_micro_batch(), s.shard, 8
        assert dp_bytes(tr) == (2 - 1) * (2 * m * G + S) * w == r["expected_bytes_sent"] - s.scalar_bytes()
        gathers = [c for c in tr.step_log.collectives if c.group == s.comm.group and c.op == "all_gather"]
        per_pass = sum(len(units) for units in s.chunk_units.values())
        assert len(gathers) == 2 * m * per_pass                     # every unit, every forward and backward
        e = est["ranks"][tr.grid.coords["pp"]]
        assert r["model_states"]["parameters"] == r["model_states"]["gradients"] == w * S
        assert {k: r["model_states"][k] for k in r["expected_model_states"]} == r["expected_model_states"]
        assert {k: r["model_states"][k] for k in ("parameters", "gradients", "optimizer_states")} == \
            {k: e["model_states"][k] for k in ("parameters", "gradients", "optimizer_states")}
        assert tr.history[-1]["bytes_sent"] == e["bytes_sent"]["total"], (schedule, tr.rank)
        assert dp_bytes(tr) == e["bytes_sent"]["data_parallel"] and e["shard"] == S
    # the V schedules hold both ends on rank 0: the root is gathered by two chunks per pass
    v = schedule in ("zb_v", "dualpipe_v")
    assert (est["ranks"][0]["bytes_sent"]["data_parallel"] > est["ranks"][1]["bytes_sent"]["data_parallel"] * 1.2) == v
