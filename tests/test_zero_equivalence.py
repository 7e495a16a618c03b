"""Every data-parallel strategy trains to the same parameters as one rank on the same global
batch, step by step (float64: 1e-12; float32: bounds derived in test_matches_single_rank_float32).

Matrix: strategy × world size 1..5, and inside each test Adam/SGD × accumulation 1/2.
"""
import functools

import numpy as np
import pytest

from minidist import distributed as dist
from minidist.testing import max_abs_diff, train_steps

pytestmark = [pytest.mark.zero, pytest.mark.timeout(240)]

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


U32 = 2.0 ** -24            # float32 unit roundoff


def zero_exact_gradient(name, shape):
    """Elements whose gradient is exactly 0 in exact arithmetic: the attention *key* bias
    (c_attn's bias is [q | k | v]). Adding b to every key adds q·b to a whole row of
    scores, which softmax ignores, so ∂L/∂b_k = 0 — computed in float32 it is rounding noise."""
    mask = np.zeros(shape, dtype=bool)
    if name.endswith("attn.c_attn.bias"):
        n_embd = shape[0] // 3
        mask[n_embd:2 * n_embd] = True
    return mask


@pytest.mark.parametrize("strategy,world_size", [("ddp", 4), ("zero1", 3), ("zero2", 5), ("zero3", 4),
                                                 ("offload_zero3", 3), ("parameter_server", 2)])
def test_matches_single_rank_float32(strategy, world_size):
    """In float32 a strategy adds the same numbers in another order (p partial gradients
    summed by the collective instead of one matmul over the global batch), so each gradient
    element differs by a few ulps of its tensor's gradients. Per element, after every step:

    * SGD (momentum 0.9): the step is linear in the gradient, so the weights differ by
      lr·(that noise) plus their own rounding — a few ulps of the tensor's largest weight.
      Bound: 32 ulps of max|w| of the tensor (measured ≤ 10).
    * Adam: m̂/(√v̂+ε) does not depend on the gradient's scale, so it amplifies the relative
      noise of small gradients: 1024 ulps of the tensor's max|w| (measured ≤ 275; one lost
      update would be lr = 1e-2, ~10^4 times more). Where the gradient is exactly zero in exact
      arithmetic (the key bias, see :func:`zero_exact_gradient`) it is pure noise and the step
      can point either way: there only Adam's step bound holds (Kingma & Ba 2015 §2.1:
      |Δ| ≲ lr per step), |difference| ≤ 2·lr·(t+1).

    Both references move: the comparison is not between two idle models."""
    for optimizer, ulps in (("SGD", 32), ("Adam", 1024)):
        runs = dist.spawn(train_steps, world_size, config(MICRO, optimizer, 2, dtype="float32",
                                                          extra=STRATEGIES[strategy]))
        ref = reference(MICRO * world_size, optimizer, 2, "float32")
        lr = OPTIMIZERS[optimizer]["lr"]
        assert max_abs_diff(ref[-1], ref[0]) > 1e-3
        for step in range(STEPS):
            for name, want in ref[step].items():
                diff = np.abs(runs[-1]["params"][step][name] - want)
                noise = zero_exact_gradient(name, want.shape) if optimizer == "Adam" else np.zeros(want.shape, bool)
                bound = ulps * U32 * np.abs(want).max()
                where = f"{strategy} p={world_size} {optimizer} step {step} {name}"
                assert diff[~noise].max(initial=0) <= bound, f"{where}: {diff[~noise].max():.3g} > {bound:.3g}"
                assert diff[noise].max(initial=0) <= 2 * lr * (step + 1), where


@pytest.mark.parametrize("strategy,world_size", [("zero2", 3), ("zero3", 2), ("ddp", 3)])
def test_gradient_clipping_over_shards(strategy, world_size):
    """The clip norm is global: ZeRO sums the shards' squares with an all-reduce first."""
    cfg = config(MICRO, "SGD", 1, extra=STRATEGIES[strategy], clip=0.05)
    runs = dist.spawn(train_steps, world_size, cfg)
    ref = reference(MICRO * world_size, "SGD", 1, clip=0.05)
    unclipped = reference(MICRO * world_size, "SGD", 1)
    assert max_abs_diff(ref[-1], unclipped[-1]) > 1e-6       # the clip is active in this run
    assert max_abs_diff(runs[0]["params"][-1], ref[-1]) < 1e-12
