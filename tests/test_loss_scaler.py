"""Loss scalers: DeepSpeed's back-off / hysteresis / growth rules on scripted overflow patterns.

Every expected sequence below was worked out by hand from the rules in DeepSpeed's
``DynamicLossScaler.update_scale`` (see the module docstring of
``minidist.precision.loss_scaler``); the comments show the derivation step by step.
"""
import numpy as np
import pytest

from minidist.precision import (
    DynamicLossScaler,
    LossScaleAtMinimumError,
    StaticLossScaler,
    from_config,
    has_overflow,
)

pytestmark = pytest.mark.precision

T, F = True, False


def run(scaler, pattern):
    """Feed an overflow pattern; return the scale each step used and the scale afterwards."""
    for overflow in pattern:
        scaler.update_scale(overflow)
    return [h.scale for h in scaler.history], scaler.loss_scale


def test_growth_and_backoff_without_hysteresis():
    # window 3, start 16. Clean steps are counted from the last overflow (initially "-1"):
    # it0 (0+1)%3  it1 2%3  it2 3%3==0 -> 32 | it3, it4, it5 (6%3==0) -> 64
    # it6 overflow -> 32, last=6 | it7 1, it8 2, it9 3 -> 64 | it10 overflow -> 32
    s = DynamicLossScaler(init_scale=16, scale_window=3, delayed_shift=1)
    used, final = run(s, [F, F, F, F, F, F, T, F, F, F, T])
    assert used == [16, 16, 16, 32, 32, 32, 64, 32, 32, 32, 64]
    assert final == 32
    assert [h.overflow for h in s.history] == [F, F, F, F, F, F, T, F, F, F, T]
    assert [h.iteration for h in s.history] == list(range(11))


def test_hysteresis_delays_the_first_backoff():
    # hysteresis 2, window 4, start 1024:
    # it2 overflow: budget 2 -> 1, scale kept, last=2
    # it3 clean (1 since overflow; budget NOT refilled without consecutive_hysteresis)
    # it4 overflow: budget is 1 -> halve to 512, last=4;  it5 overflow: budget still 1 -> 256
    # it6..it9 clean: at it9 (9-5)%4==0 -> 512 and the budget refills to 2
    # it10 overflow: budget 2 -> 1, scale stays 512
    s = DynamicLossScaler(init_scale=1024, scale_window=4, delayed_shift=2)
    used, final = run(s, [F, F, T, F, T, T, F, F, F, F, T])
    assert used == [1024, 1024, 1024, 1024, 1024, 512, 256, 256, 256, 256, 512]
    assert final == 512 and s.cur_hysteresis == 1


@pytest.mark.parametrize("consecutive,expected_used,expected_final", [
    # consecutive: every clean step refills the budget, so only two overflows in a row halve:
    #   T(2->1) F(refill) T(2->1) F(refill) T(2->1) T(1: halve) -> 128
    (True, [256, 256, 256, 256, 256, 256], 128),
    # default: the budget refills only when the scale grows, so after the first overflow
    # every further overflow halves: T(2->1) F T(256->128) F T(->64) T(->32)
    (False, [256, 256, 256, 128, 128, 64], 32),
])
def test_consecutive_hysteresis(consecutive, expected_used, expected_final):
    s = DynamicLossScaler(init_scale=256, scale_window=100, delayed_shift=2, consecutive_hysteresis=consecutive)
    used, final = run(s, [T, F, T, F, T, T])
    assert used == expected_used and final == expected_final


def test_min_loss_scale_is_a_floor():
    s = DynamicLossScaler(init_scale=8, min_scale=3, scale_window=10, raise_error_at_min_scale=False)
    used, final = run(s, [T, T, T, T])
    assert used == [8, 4, 3, 3] and final == 3            # max(8/2, 3)=4, max(4/2, 3)=3, stays


def test_overflow_at_min_scale_raises_by_default():
    s = DynamicLossScaler(init_scale=4, min_scale=2, scale_window=10)
    s.update_scale(True)                                    # 4 -> 2, now at the floor
    assert s.loss_scale == 2
    with pytest.raises(LossScaleAtMinimumError, match="min_loss_scale=2"):
        s.update_scale(True)


def test_static_scaler_never_changes():
    s = StaticLossScaler(128)
    used, final = run(s, [T, F, T, F])
    assert used == [128] * 4 and final == 128 and not s.dynamic
    with pytest.raises(ValueError):
        StaticLossScaler(0)


def test_a_floor_above_the_initial_scale_is_refused_as_the_config_refuses_it():
    with pytest.raises(ValueError, match=r"init_scale=4 is below min_scale=8; raise init_scale or lower min_scale"):
        DynamicLossScaler(init_scale=4, min_scale=8)
    assert DynamicLossScaler(init_scale=8, min_scale=8).loss_scale == 8


def test_has_overflow():
    ok = [np.ones(3, np.float32), None, np.zeros((2, 2))]
    assert not has_overflow(ok)
    assert has_overflow(ok + [np.array([1.0, np.inf])])
    assert has_overflow(np.array([np.nan], np.float16))
    assert not has_overflow(np.array([6.0e4], np.float16))


def test_from_config_builds_the_right_scaler():
    assert isinstance(from_config({}), StaticLossScaler) and from_config({}).loss_scale == 1.0
    assert from_config({"enabled": False, "loss_scale": 0}).loss_scale == 1.0
    static = from_config({"enabled": True, "loss_scale": 512})
    assert isinstance(static, StaticLossScaler) and static.loss_scale == 512
    dyn = from_config({"enabled": True, "initial_scale_power": 12, "loss_scale_window": 50,
                       "hysteresis": 3, "min_loss_scale": 0.5, "consecutive_hysteresis": True})
    assert isinstance(dyn, DynamicLossScaler)
    assert (dyn.loss_scale, dyn.scale_window, dyn.delayed_shift, dyn.min_scale) == (4096, 50, 3, 0.5)
    assert dyn.consecutive_hysteresis
    # DeepSpeed's config defaults: 2^16, window 1000, hysteresis 2, min 1
    d = from_config({"enabled": True})
    assert (d.loss_scale, d.scale_window, d.delayed_shift, d.min_scale) == (65536, 1000, 2, 1)


@pytest.mark.parametrize("cfg,key", [
    ({"enabled": True, "loss_scale_windw": 10}, "loss_scale_windw"),
    ({"enabled": True, "hysteresis": 0}, "fp16.hysteresis"),
    ({"enabled": True, "hysteresis": True}, "fp16.hysteresis"),
    ({"enabled": True, "initial_scale_power": "16"}, "fp16.initial_scale_power"),
    ({"enabled": True, "initial_scale_power": 200}, "fp16.initial_scale_power"),
    ({"enabled": True, "min_loss_scale": -1}, "fp16.min_loss_scale"),
    ({"enabled": True, "loss_scale": -2}, "fp16.loss_scale"),
    ({"enabled": "yes"}, "fp16.enabled"),
    ({"enabled": True, "loss_scale_window": 0}, "fp16.loss_scale_window"),
    ({"enabled": True, "initial_scale_power": 1, "min_loss_scale": 4}, "fp16.initial_scale_power"),
])
def test_from_config_rejects_bad_input_naming_the_key(cfg, key):
    with pytest.raises(ValueError, match=key):
        from_config(cfg)
