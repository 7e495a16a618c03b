"""Dropout under data parallelism: every layout trains exactly like one rank.

The decision (see :class:`minidist.nn.DropoutRNG` and the Trainer's docstring): the dropout
masks of the global batch are the ones a single rank draws, and a data-parallel rank uses
its rows of them. Each row is drawn from a stream keyed by (layer, step, micro-step, row of
the global batch), so no rank ever draws the whole batch's masks.
"""
import functools

import numpy as np
import pytest

from minidist import distributed as dist
from minidist import functional as F
from minidist.model import GPT, GPTConfig
from minidist.nn import Dropout, DropoutRNG
from minidist.tensor import Tensor
from minidist.testing import max_abs_diff, train_steps

pytestmark = pytest.mark.zero

MICRO, STEPS, P = 2, 3, 0.1


def config(micro, accumulation=1, extra=None):
    cfg = {"model": {"n_layer": 2, "n_embd": 8, "n_head": 2, "block_size": 8, "dropout": P},
           "data": {"dataset": "copy", "n_digits": 3, "seq_len": 7}, "dtype": "float64",
           "train_micro_batch_size_per_gpu": micro, "gradient_accumulation_steps": accumulation,
           "steps": STEPS, "optimizer": {"type": "SGD", "params": {"lr": 0.1, "momentum": 0.9}}}
    cfg.update(extra or {})
    return cfg


@functools.lru_cache(maxsize=None)
def reference(global_micro, accumulation):
    return train_steps(None, config(global_micro, accumulation))["params"]


def test_a_slice_of_rows_draws_the_rows_of_the_whole_batch():
    whole, part = DropoutRNG(7), DropoutRNG(7)
    whole.key, part.key = (3, 1, 0), (3, 1, 4)            # step 3, micro 1; part starts at row 4
    u = whole.random((6, 2, 5))
    assert np.array_equal(part.random((2, 2, 5)), u[4:6])
    again = DropoutRNG(7)
    again.key = (3, 1, 0)
    assert np.array_equal(again.random((6, 2, 5)), u)      # the same key redraws the same numbers
    for other_key in [(4, 1, 0), (3, 0, 0)]:               # another step or micro-step: other masks
        again.key = other_key
        assert not np.array_equal(again.random((6, 2, 5)), u)
    assert 0.4 < u.mean() < 0.6 and u.min() >= 0 and u.max() < 1


def test_dropout_keeps_p_of_the_elements_and_scales_the_rest():
    layer = Dropout(0.25, seed=3)
    layer.rng.key = (0, 0, 0)
    x = Tensor(np.ones((8, 50, 50)), requires_grad=True)
    y = layer(x)
    kept = y.data != 0
    assert abs(kept.mean() - 0.75) < 0.02                           # 20 000 draws: σ ≈ 0.003
    assert np.allclose(y.data[kept], 1 / 0.75)
    y.backward(np.ones_like(y.data))
    assert np.array_equal(x.grad, y.data)                           # the same mask in backward
    assert np.array_equal(layer.eval()(x).data, x.data)             # identity in eval mode
    assert F.dropout(x, 0.0).data is x.data


def test_the_model_applies_dropout_from_the_key():
    cfg = GPTConfig(block_size=8, vocab_size=11, n_layer=1, n_head=2, n_embd=8, dropout=P)
    model = GPT(cfg, seed=1, dtype=np.float64)
    idx = np.arange(16).reshape(2, 8) % 11
    logits = {}
    for key in [(0, 0, 0), (0, 0, 0), (1, 0, 0)]:
        model.set_dropout_key(*key)
        logits.setdefault(key, []).append(model(idx)[0].data)
    assert np.array_equal(*logits[(0, 0, 0)])                       # same key: same masks
    assert not np.allclose(logits[(0, 0, 0)][0], logits[(1, 0, 0)][0])
    # sites: embedding dropout, and per block attention probabilities, attention output, MLP output
    assert sum(isinstance(m, Dropout) for m in model.modules()) == 1 + 3 * cfg.n_layer
    model.eval()
    plain = model(idx)[0].data
    assert not np.allclose(plain, logits[(0, 0, 0)][0])            # dropout was really on


@pytest.mark.timeout(120)
@pytest.mark.parametrize("strategy", ["ddp", "zero2"])
@pytest.mark.parametrize("world_size", [2, 3])
def test_data_parallel_with_dropout_equals_one_rank(strategy, world_size):
    extra = {"zero_optimization": {"stage": 2 if strategy == "zero2" else 0, "reduce_bucket_size": 300,
                                   "overlap_comm": True}}
    for accumulation in (1, 2):
        runs = dist.spawn(train_steps, world_size, config(MICRO, accumulation, extra))
        ref = reference(MICRO * world_size, accumulation)
        for rank, run in enumerate(runs):
            for step in range(STEPS):
                err = max_abs_diff(run["params"][step], ref[step])
                assert err < 1e-12, (f"{strategy} p={world_size} accumulation={accumulation}: rank {rank} "
                                     f"differs from one rank by {err:.3g} after step {step}")
        assert max_abs_diff(ref[-1], ref[0]) > 1e-3                 # the weights really moved


def test_dropout_changes_training():
    """The equivalence above is not vacuous: the same run without dropout ends elsewhere."""
    cfg = config(2 * MICRO)
    cfg["model"]["dropout"] = 0.0
    without = train_steps(None, cfg)
    assert max_abs_diff(without["params"][-1], reference(2 * MICRO, 1)[-1]) > 1e-3
