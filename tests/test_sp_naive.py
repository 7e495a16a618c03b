"""Naive beside optimised: sequence parallelism that all-gathers the sequence and runs an
ordinary column-parallel linear (``parallel.sequence_parallel_naive``) keeps the gathered
input, sbh per column-parallel layer, where Megatron's linear keeps its s/t shard and gathers
again in backward: bit-identical numbers, t times the saved input, one all-gather fewer per layer."""
import copy

import numpy as np
import pytest

from minidist import distributed as dist
from minidist.testing import train_steps

pytestmark = [pytest.mark.tensor, pytest.mark.timeout(60)]

CFG = {"model": {"n_layer": 2, "n_embd": 16, "n_head": 4, "block_size": 8, "dropout": 0.1},
       "data": {"dataset": "english", "seq_len": 8}, "dtype": "float64", "steps": 2, "eval_iters": 1,
       "train_micro_batch_size_per_gpu": 2,
       "parallel": {"tensor": 2, "sequence_parallel": True}}


def test_naive_sequence_parallel_trains_the_same_and_keeps_t_times_the_linear_inputs():
    naive = copy.deepcopy(CFG)
    naive["parallel"]["sequence_parallel_naive"] = True
    a, b = dist.spawn(train_steps, 2, naive), dist.spawn(train_steps, 2, CFG)
    for x, y in zip(a, b):
        for pa, pb in zip(x["params"], y["params"]):
            assert all(np.array_equal(pa[k], pb[k]) for k in pb)
    # per layer, c_attn's and c_fc's inputs: (B, T, h) gathered instead of (B, T/t, h): + 2·(1 − 1/t)·sbh·w
    s, bsz, h, t, w, L = 8, 2, 16, 2, 8, 2
    extra = L * 2 * (1 - 1 / t) * s * bsz * h * w
    peak = [r["trainer"].device.memory.max_by_category["activations"] for r in (a[0], b[0])]
    assert peak[0] - peak[1] == extra
    gathers = [sum(v["bytes_sent"] for k, v in r["trainer"].step_log.summary().items() if k.startswith("all_gather"))
               for r in (a[0], b[0])]
    assert gathers[0] < gathers[1]                          # no re-gather for dW in backward
