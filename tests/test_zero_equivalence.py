"""Every data-parallel strategy trains to the same parameters as one rank on the same global
batch, step by step (float64: tight; float32: within reordering tolerance).

Matrix: strategy × world size 1..5, and inside each test Adam/SGD × accumulation 1/2.
"""
import functools

import numpy as np
import pytest

from minidist import distributed as dist
from minidist.testing import max_abs_diff, train_steps

pytestmark = pytest.mark.zero

MICRO = 2          # sequences per rank per micro-step
STEPS = 3

STRATEGIES = {
    "parameter_server": {"parallel": {"data_parallel": "parameter_server"}},
    "ddp": {"zero_optimization": {"overlap_comm": True, "reduce_bucket_size": 300}},
    "ddp_no_overlap": {"zero_optimization": {"overlap_comm": False, "reduce_bucket_size": 300}},
    "zero1": {"zero_optimization": {"stage": 1, "reduce_bucket_size": 300, "allgather_bucket_size": 700}},
    "zero2": {"zero_optimization": {"stage": 2, "reduce_bucket_size": 300, "overlap_comm": True}},
    "zero3": {"zero_optimization": {"stage": 3, "overlap_comm": True}},
    "zero3_no_prefetch": {"zero_optimization": {"stage": 3, "stage3_prefetch_bucket_size": 0}},
    "offload_zero2": {"zero_optimization": {"stage": 2, "offload_optimizer": {"device": "cpu"}}},
    "offload_zero3": {"zero_optimization": {"stage": 3, "offload_optimizer": {"device": "cpu"}}},
}
OPTIMIZERS = {"Adam": {"lr": 1e-2}, "SGD": {"lr": 0.1, "momentum": 0.9}}


def config(micro, optimizer="Adam", accumulation=1, dtype="float64", extra=None, clip=0.0):
    cfg = {"model": {"n_layer": 2, "n_embd": 8, "n_head": 2, "block_size": 8},
           "data": {"dataset": "copy", "n_digits": 3, "seq_len": 7}, "dtype": dtype,
           "train_micro_batch_size_per_gpu": micro, "gradient_accumulation_steps": accumulation,
           "steps": STEPS, "gradient_clipping": clip,
           "optimizer": {"type": optimizer, "params": OPTIMIZERS[optimizer]}}
    for key, value in (extra or {}).items():
        cfg[key] = value
    return cfg


@functools.lru_cache(maxsize=None)
def reference(global_micro, optimizer, accumulation, dtype="float64", clip=0.0):
    """One rank, plain training, micro-batch = the whole global micro-batch."""
    return train_steps(None, config(global_micro, optimizer, accumulation, dtype, clip=clip))["params"]


@pytest.mark.parametrize("world_size", [1, 2, 3, 4, 5])
@pytest.mark.parametrize("strategy", list(STRATEGIES))
def test_matches_single_rank_float64(strategy, world_size):
    for optimizer in OPTIMIZERS:
        for accumulation in (1, 2):
            cfg = config(MICRO, optimizer, accumulation, extra=STRATEGIES[strategy])
            runs = dist.spawn(train_steps, world_size, cfg)
            ref = reference(MICRO * world_size, optimizer, accumulation)
            for rank, run in enumerate(runs):
                for step in range(STEPS):
                    err = max_abs_diff(run["params"][step], ref[step])
                    assert err < 1e-12, (f"{strategy} p={world_size} {optimizer} accumulation={accumulation}: "
                                         f"rank {rank} differs from one rank by {err:.3g} after step {step}")
            # the parameters really moved: the comparison is not between two idle models
            assert max_abs_diff(ref[-1], ref[0]) > 1e-4


@pytest.mark.parametrize("strategy,world_size", [("ddp", 4), ("zero1", 3), ("zero2", 5), ("zero3", 4),
                                                 ("offload_zero3", 3), ("parameter_server", 2)])
def test_matches_single_rank_float32(strategy, world_size):
    cfg = config(MICRO, "Adam", 2, dtype="float32", extra=STRATEGIES[strategy])
    runs = dist.spawn(train_steps, world_size, cfg)
    ref = reference(MICRO * world_size, "Adam", 2, "float32")
    for step in range(STEPS):
        for name, value in ref[step].items():
            np.testing.assert_allclose(runs[-1]["params"][step][name], value, rtol=1e-4, atol=2e-6,
                                       err_msg=f"{strategy} p={world_size} step {step} {name}")


@pytest.mark.parametrize("strategy,world_size", [("zero2", 3), ("zero3", 2), ("ddp", 3)])
def test_gradient_clipping_over_shards(strategy, world_size):
    """The clip norm is global: ZeRO sums the shards' squares with an all-reduce first."""
    cfg = config(MICRO, "SGD", 1, extra=STRATEGIES[strategy], clip=0.05)
    runs = dist.spawn(train_steps, world_size, cfg)
    ref = reference(MICRO * world_size, "SGD", 1, clip=0.05)
    unclipped = reference(MICRO * world_size, "SGD", 1)
    assert max_abs_diff(ref[-1], unclipped[-1]) > 1e-6       # the clip is active in this run
    assert max_abs_diff(runs[0]["params"][-1], ref[-1]) < 1e-12
