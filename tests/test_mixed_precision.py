"""Mixed-precision training: autocast, fp32 masters, loss scaling, overflow skip, memory split."""
import numpy as np
import pytest

from minidist import distributed as dist
from minidist import functional as F
from minidist.training.data import TextDataset
from minidist.device import Device
from minidist.model import GPT, GPTConfig
from minidist.optim import Adam
from minidist.precision import (
    DynamicLossScaler,
    MixedPrecision,
    StaticLossScaler,
    autocast,
    from_training_config,
    lost_gradient_mass,
    quantize,
)
from minidist.tensor import Parameter, Tensor

pytestmark = pytest.mark.precision

DATA = TextDataset(seq_len=16)
CFG = GPTConfig(block_size=16, vocab_size=DATA.vocab_size, n_layer=2, n_head=2, n_embd=32)


def half(a):
    """Independent fp16 rounding: NumPy's own float16 cast."""
    return np.asarray(a, np.float32).astype(np.float16).astype(np.float32)


# -- autocast ------------------------------------------------------------------------------
def test_autocast_linear_is_fp16_inputs_with_fp32_accumulation():
    rng = np.random.default_rng(0)
    x = Tensor(rng.normal(size=(4, 8)).astype(np.float32) * 3, requires_grad=True)
    w = Tensor(rng.normal(size=(8, 5)).astype(np.float32), requires_grad=True)
    with autocast("fp16"):
        y = F.linear(x, w)
    expected = half(half(x.data) @ half(w.data))       # round operands, fp32 product, round output
    np.testing.assert_array_equal(y.data, expected)
    assert not np.array_equal(y.data, x.data @ w.data)  # it did change something
    y_fp32 = F.linear(x, w)                              # outside autocast: plain float32
    np.testing.assert_array_equal(y_fp32.data, x.data @ w.data)


def test_autocast_rounds_incoming_gradients_and_keeps_the_loss_fp32():
    rng = np.random.default_rng(1)
    logits = Tensor(rng.normal(size=(6, 7)).astype(np.float32), requires_grad=True)
    with autocast("fp16"):
        h = logits * 1.1                  # a low-precision op: its gradient is fp16
        loss = F.cross_entropy(h, np.arange(6) % 7)
    assert loss.data.dtype == np.float32 and not np.array_equal(quantize(loss.data, "fp16"), loss.data)
    loss.backward(np.float32(1e-4))      # upstream gradient tiny: fp16 subnormals / zeros
    probs = np.exp(h.data - h.data.max(1, keepdims=True))
    probs /= probs.sum(1, keepdims=True)
    d = probs.copy()
    d[np.arange(6), np.arange(6) % 7] -= 1
    d *= np.float32(1e-4) / 6
    np.testing.assert_allclose(logits.grad, half(d) * np.float32(1.1), rtol=1e-6)


def test_saved_activations_are_charged_at_two_bytes():
    x = Tensor(np.ones((4, 8), np.float32) / 3, requires_grad=True)
    dev = Device()
    with dev:
        w = Parameter(np.ones((8, 5), np.float32))
        with autocast("fp16"):
            y = F.linear(x, w)
        assert dev.memory.current["activations"] == 4 * 8 * 2      # x, saved for dW, in fp16
        y.sum().backward()
    assert dev.memory.current["activations"] == 0


def test_gpt_activation_peak_roughly_halves_under_autocast():
    x, y = DATA.get_batch(4, 0)
    peaks = {}
    for dtype in (None, "bf16"):
        dev = Device()
        with dev:
            model = GPT(CFG)
            with autocast(dtype):
                _, loss = model(x, y)
            peaks[dtype] = dev.memory.current["activations"]
            loss.backward()
    ratio = peaks["bf16"] / peaks[None]
    # most saved arrays halve; the fp32 ops (layer-norm statistics, the loss's softmax) do not
    assert 0.5 <= ratio < 0.7, ratio


# -- underflow -------------------------------------------------------------------------------
def _grads(scale, dtype, factor, x, y):
    model = GPT(CFG, seed=0)
    if dtype is None:
        _, loss = model(x, y)
        (loss * factor).backward()
        return [p.grad.copy() for p in model.parameters()]
    mp = MixedPrecision(model, Adam(model.parameters()), dtype, scaler=StaticLossScaler(scale))
    with autocast(dtype):
        _, loss = model(x, y)
    mp.scale_loss(loss * factor).backward()
    mp.round_gradients()
    return [p.grad / np.float32(scale) for p in model.parameters()]


def test_loss_scaling_rescues_gradients_that_underflow_in_fp16():
    # one micro-batch of a 128-step gradient accumulation: its loss is divided by 128
    x, y = DATA.get_batch(16, 3)
    ref = _grads(None, None, 1 / 128, x, y)
    unscaled = lost_gradient_mass(ref, _grads(1.0, "fp16", 1 / 128, x, y))
    scaled = lost_gradient_mass(ref, _grads(2.0 ** 12, "fp16", 1 / 128, x, y))
    bf16 = lost_gradient_mass(ref, _grads(1.0, "bf16", 1 / 128, x, y))
    assert unscaled.fraction > 0.05            # measured ≈ 0.15: whole gradients flushed to 0
    assert scaled.fraction < 0.002
    assert unscaled.mass > 1000 * max(scaled.mass, 1e-12)
    assert bf16.fraction < 0.002               # bf16's range needs no scaling


# -- training parity ---------------------------------------------------------------------
def _train(dtype, steps=100, seed=1):
    model = GPT(CFG, seed=seed)
    opt = Adam(model.parameters(), lr=1e-3)
    mp = None if dtype is None else MixedPrecision(model, opt, dtype)
    losses = []
    for s in range(steps):
        x, y = DATA.get_batch(8, s, seed)
        with autocast(dtype):
            _, loss = model(x, y)
        if mp is None:
            loss.backward()
            opt.step()
        else:
            mp.scale_loss(loss).backward()
            mp.step()
        opt.zero_grad()
        losses.append(float(loss.data))
    return losses, mp


def test_fp16_dynamic_and_bf16_train_as_well_as_fp32():
    fp32, _ = _train(None)
    fp16, mp16 = _train("fp16")
    bf16, mp16b = _train("bf16")
    assert np.mean(fp32[-20:]) < fp32[0] - 0.8                 # it trains at all
    for run in (fp16, bf16):                                    # measured gaps ≈ 0.002
        assert abs(np.mean(run[-20:]) - np.mean(fp32[-20:])) < 0.05
    assert mp16.history[0].scale == 2.0 ** 16                  # DeepSpeed's initial_scale_power
    assert {h.scale for h in mp16b.history} == {1.0}           # bf16: no loss scaling


# -- overflow: skip and the scale sequence ------------------------------------------------
def _snapshot(mp):
    params = [p.data.copy() for p in mp.params()]
    masters = [m.data.copy() for m in mp.masters()]
    states = [{k: (v.copy() if isinstance(v, np.ndarray) else v) for k, v in mp.optimizer.state_for(m).items()}
              for m in mp.masters()]
    return params, masters, states


def _same(a, b):
    pa, ma, sa = a
    pb, mb, sb = b
    return (all(np.array_equal(x, y) for x, y in zip(pa + ma, pb + mb))
            and all(x.keys() == y.keys() and all(np.array_equal(x[k], y[k]) for k in x) for x, y in zip(sa, sb)))


def test_injected_overflow_skips_the_step_and_follows_the_hysteresis_schedule():
    model = GPT(CFG, seed=0)
    opt = Adam(model.parameters(), lr=1e-3)
    scaler = DynamicLossScaler(init_scale=16, scale_window=3, min_scale=1, delayed_shift=2)
    mp = MixedPrecision(model, opt, "fp16", scaler=scaler)
    pattern = [False, True, False, True, True, False, False, False, True]
    for step, inject in enumerate(pattern):
        x, y = DATA.get_batch(4, step)
        with autocast("fp16"):
            _, loss = model(x, y)
        mp.scale_loss(loss).backward()
        if inject:
            model.transformer.h[1].mlp.c_fc.weight.grad[3, 5] = np.inf
        before = _snapshot(mp)
        took = mp.step()
        assert took == (not inject)
        assert _same(before, _snapshot(mp)) == inject          # untouched exactly when skipped
        opt.zero_grad()
    # By hand (DeepSpeed rules, window 3, hysteresis 2): 0 clean; 1 overflow spends the
    # hysteresis (16 kept); 2 clean; 3 overflow: 16→8; 4 overflow: 8→4 (budget not refilled);
    # 5, 6 clean; 7 clean and 3 steps since the overflow at 4: 4→8, budget refilled;
    # 8 overflow spends hysteresis again, 8 kept.
    assert [h.scale for h in mp.history] == [16, 16, 16, 16, 8, 4, 4, 4, 8]
    assert [h.skipped for h in mp.history] == pattern
    assert mp.loss_scale == 8


def test_overflow_on_one_rank_skips_the_step_on_every_rank():
    def rank_fn(comm):
        model = GPT(CFG, seed=0)
        opt = Adam(model.parameters(), lr=1e-3)
        mp = MixedPrecision(model, opt, "fp16", comm=comm,
                            scaler=DynamicLossScaler(init_scale=2.0 ** 8, scale_window=100, delayed_shift=1))
        took = []
        for step in range(3):
            x, y = DATA.get_batch(4, 10 * step + comm.rank)
            with autocast("fp16"):
                _, loss = model(x, y)
            mp.scale_loss(loss).backward()
            if step == 1 and comm.rank == 1:
                model.transformer.wte.weight.grad[0, 0] = np.nan
            before = _snapshot(mp)
            took.append(mp.step())
            took.append(not _same(before, _snapshot(mp)))
            opt.zero_grad()
        reduces = [r for r in comm.log.collectives if r.op == "all_reduce"]
        return took, [h.scale for h in mp.history], len(reduces)

    results = dist.spawn(rank_fn, world_size=2)
    for took, scales, n_reduce in results:
        assert took == [True, True, False, False, True, True]    # (stepped, changed) per step
        assert scales == [256, 256, 128]
        assert n_reduce == 3                                     # one flag all-reduce per step


# -- memory -------------------------------------------------------------------------------
def test_mixed_precision_adam_holds_2_2_12_bytes_per_parameter():
    dev = Device()
    with dev:
        model = GPT(CFG, seed=0)
        opt = Adam(model.parameters())
        mp = MixedPrecision(model, opt, "fp16")
        n = model.num_parameters()
        assert dev.memory.current["parameters"] == 2 * n
        assert dev.memory.current["optimizer_states"] == 12 * n    # master 4 + m 4 + v 4
        x, y = DATA.get_batch(2, 0)
        with autocast("fp16"):
            _, loss = model(x, y)
        mp.scale_loss(loss).backward()
        assert dev.memory.current["gradients"] == 2 * n
        mp.step()
        opt.zero_grad()
    assert dev.memory.current["gradients"] == 0
    assert (dev.memory.current["parameters"], dev.memory.current["optimizer_states"]) == (2 * n, 12 * n)
    assert mp.state_bytes() == {"parameters": 2 * n, "gradients": 2 * n, "master": 4 * n, "optimizer": 8 * n}


# -- config -------------------------------------------------------------------------------
def test_from_training_config_follows_the_deepspeed_sections():
    def build(cfg):
        model = GPT(CFG, seed=0)
        return from_training_config(cfg, model, Adam(model.parameters()))
    assert build({}) is None
    mp = build({"fp16": {"enabled": True, "initial_scale_power": 5, "hysteresis": 3, "loss_scale_window": 7}})
    assert (mp.dtype, mp.loss_scale, mp.scaler.delayed_shift, mp.scaler.scale_window) == ("fp16", 32, 3, 7)
    assert build({"fp16": {"enabled": True, "loss_scale": 128}}).scaler.dynamic is False
    mp = build({"bf16": {"enabled": True}})
    assert (mp.dtype, mp.loss_scale) == ("bf16", 1.0)
    with pytest.raises(ValueError, match="both"):
        build({"fp16": {"enabled": True}, "bf16": {"enabled": True}})
