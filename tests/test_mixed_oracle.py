"""One mixed-precision SGD step moves the fp32 master weights by exactly −lr·g.

``g`` is the unscaled gradient: the gradient backward produced from ``loss·S``, held in
fp16 (rounded here with NumPy's own IEEE ``float16``, or ``ml_dtypes.bfloat16``), divided by
``S`` in float64. S is a power of two, so the division is exact and the only roundings
left are float32's in ``lr·g`` and in the subtraction: the bound below is derived from them
(half an ulp each), not tuned. A second, coarser check compares g with the float64
gradient of the same weights (no autocast, no scaling), so that a gradient that is wrong
by a constant factor (the loss scale left in) cannot pass by being consistently wrong.
"""
import ml_dtypes
import numpy as np
import pytest

from minidist import optim
from minidist.model import GPT, GPTConfig
from minidist.precision import MixedPrecision, StaticLossScaler, autocast
from minidist.training.trainer import Trainer

pytestmark = pytest.mark.precision

LR = 2.0 ** -4            # a power of two: lr·g has no extra rounding from lr itself
SCALE = 2.0 ** 10
CFG = GPTConfig(block_size=8, vocab_size=11, n_layer=2, n_head=2, n_embd=16)
LOW = {"fp16": np.float16, "bf16": ml_dtypes.bfloat16}


def rounded(a, fmt):
    """``a`` held in the low-precision format (IEEE round-to-nearest-even), as float64."""
    return np.asarray(a, dtype=np.float32).astype(LOW[fmt]).astype(np.float64)


def assert_moved_by_minus_lr_g(before, after, g, what):
    """after == before − lr·g in float64, up to float32's two roundings (½ ulp each)."""
    step = LR * g
    want = before.astype(np.float64) - step
    ulp = lambda x: np.spacing(np.abs(x).astype(np.float32)).astype(np.float64)   # noqa: E731
    bound = 0.5 * ulp(np.maximum(np.abs(want), np.abs(after))) + 0.5 * ulp(step)
    err = np.abs(after.astype(np.float64) - want)
    worst = np.argmax(err - bound)
    assert np.all(err <= bound), (f"{what}: master moved by {after.ravel()[worst] - before.ravel()[worst]:.6g} "
                                  f"at {worst}, expected {-step.ravel()[worst]:.6g} (bound {bound.ravel()[worst]:.3g})")
    return np.abs(after - before) > 100 * bound                    # elements that really moved


def float64_gradients(weights, x, y):
    model = GPT(CFG, seed=0, dtype=np.float64)
    model.load_state_dict({n: w.astype(np.float64) for n, w in weights.items()})
    _, loss = model(x, y)
    loss.backward()
    return {n: p.grad for n, p in model.named_parameters()}


UNIT_ROUNDOFF = {"fp16": 2.0 ** -11, "bf16": 2.0 ** -8}


def assert_close_to_float64(g, g64, fmt, what):
    """Forward and backward round every activation and gradient to the format (relative
    error u each, errors partly cancelling): each tensor's gradient stays within 8·u of the
    float64 one in norm (2.5·u at most measured on this model; a loss scale left in is 2¹⁰)."""
    rel = np.linalg.norm(g - g64) / np.linalg.norm(g64)
    assert rel < 8 * UNIT_ROUNDOFF[fmt], f"{what}: gradient differs from the float64 one by {rel:.3g} of its norm"


@pytest.mark.parametrize("fmt", ["fp16", "bf16"])
def test_one_sgd_step_of_mixed_precision(fmt):
    scale = SCALE if fmt == "fp16" else 1.0
    model = GPT(CFG, seed=0)
    mp = MixedPrecision(model, optim.SGD(model.parameters(), lr=LR), fmt, scaler=StaticLossScaler(scale))
    rng = np.random.default_rng(1)
    x, y = rng.integers(0, 11, (4, 8)), rng.integers(0, 11, (4, 8))
    names = [n for n, _ in model.named_parameters()]
    weights = {n: p.data.copy() for n, p in model.named_parameters()}   # low-precision values (fp32 arrays)
    masters = [m.data.copy() for m in mp.masters()]
    with autocast(fmt):
        _, loss = model(x, y)
    mp.scale_loss(loss).backward()
    scaled = [p.grad.copy() for p in mp.params()]
    assert mp.step()                                               # not skipped
    g64 = float64_gradients(weights, x, y)
    moved = []
    for name, p, master, before, gs in zip(names, mp.params(), mp.masters(), masters, scaled):
        assert np.all(np.isfinite(gs)) and master.data.dtype == np.float32
        g = rounded(gs, fmt) / scale                               # the unscaled gradient, exact
        moved.append(assert_moved_by_minus_lr_g(before, master.data, g, f"{fmt} {name}").ravel())
        assert np.array_equal(p.data, rounded(master.data, fmt))   # the model holds the rounded master
        assert_close_to_float64(g, g64[name], fmt, f"{fmt} {name}")
    assert np.concatenate(moved).mean() > 0.9                      # most weights moved far beyond the bound


@pytest.mark.parametrize("fmt,accumulation", [("fp16", 1), ("fp16", 2), ("bf16", 1)])
def test_trainer_mixed_precision_sgd_step(fmt, accumulation):
    """The same through the Trainer (single rank): fp16 with a static loss scale of 2¹⁰."""
    section = {"enabled": True, "loss_scale": SCALE} if fmt == "fp16" else {"enabled": True}
    cfg = {"model": {"n_layer": 2, "n_embd": 16, "n_head": 2, "block_size": 8},
           "data": {"dataset": "copy", "n_digits": 3, "seq_len": 7}, "train_micro_batch_size_per_gpu": 2,
           "gradient_accumulation_steps": accumulation, "steps": 1, fmt: section,
           "optimizer": {"type": "SGD", "params": {"lr": LR}}}
    trainer = Trainer(cfg)
    mp = trainer.strategy.mp
    seen = {}
    real_step = trainer.strategy.step

    def step():                                    # what backward left, just before the update
        seen["grads"] = [p.grad.copy() for p in mp.params()]
        seen["masters"] = [m.data.copy() for m in mp.masters()]
        real_step()
    trainer.strategy.step = step
    trainer.train_step(0)
    assert not trainer.history[0]["skipped"] and trainer.history[0]["loss_scale"] == (SCALE if fmt == "fp16" else 1)
    scale = SCALE if fmt == "fp16" else 1.0
    moved = []
    for master, before, gs in zip(mp.masters(), seen["masters"], seen["grads"]):
        assert np.array_equal(gs, rounded(gs, fmt))               # gradients are held in the format
        g = rounded(gs, fmt) / scale
        moved.append(assert_moved_by_minus_lr_g(before, master.data, g, f"{fmt} {master.name}").ravel())
    assert np.concatenate(moved).mean() > 0.9                      # most weights moved far beyond the bound


def test_autocast_rounds_linears_bias_as_torch_autocast_does():
    """torch.autocast casts every input of F.linear, the bias too: the output is
    round(round(x)·round(W) + round(b)); minidist added the fp32 bias (5-8 % of outputs off)."""
    from minidist.autocast import autocast
    from minidist.numerics import quantize
    from minidist.ops.linalg import linear
    from minidist.tensor import Tensor
    rng = np.random.default_rng(0)
    A = rng.standard_normal((8, 16)).astype(np.float32) * 3
    W, b = rng.standard_normal((16, 8)).astype(np.float32), rng.standard_normal(8).astype(np.float32)
    for fmt in ("bf16", "fp16"):
        with autocast(fmt):
            y = linear(Tensor(A), Tensor(W), Tensor(b)).data
        want = quantize(quantize(A, fmt) @ quantize(W, fmt) + quantize(b, fmt), fmt)
        np.testing.assert_array_equal(y, want)
