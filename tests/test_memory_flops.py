"""The simulated device: activation accounting, FLOP counts, clock, OOM, trace export."""
import json

import numpy as np
import pytest

from minidist.device import Device, export_chrome_trace, get_spec
from minidist.memory import MemoryTracker, OutOfMemoryError
from minidist.model import GPT, GPTConfig
from minidist.optim import AdamW

pytestmark = pytest.mark.memory


def one_step(cfg, B, T, seed=0):
    dev = Device("A100-80GB-NVLink")
    with dev:
        model = GPT(cfg, seed=seed)
        opt = AdamW(model.parameters())
        rng = np.random.default_rng(seed)
        x = rng.integers(0, cfg.vocab_size, (B, T))
        y = rng.integers(0, cfg.vocab_size, (B, T))
        dev.memory.reset_peak()
        act_before = dev.memory.current["activations"]
        _, loss = model(x, y)
        act_after_forward = dev.memory.current["activations"]
        loss.backward()
        act_after_backward = dev.memory.current["activations"]
        opt.step()
    return dev, model, act_before, act_after_forward, act_after_backward


def peak_activations(dev):
    times, per = dev.memory.curves()
    return int(per["activations"].max())


CFG = GPTConfig(block_size=16, vocab_size=11, n_layer=2, n_head=2, n_embd=16)


def test_activations_rise_through_forward_and_are_freed_by_backward():
    dev, _, before, fwd, bwd = one_step(CFG, 2, 16)
    assert before == 0 and fwd > 0
    assert bwd == 0, "every saved activation must be released once backward has used it"
    times, per = dev.memory.curves()
    act = per["activations"]
    top = int(np.argmax(act))
    # rise then fall: non-decreasing up to the peak, non-increasing after it
    assert np.all(np.diff(act[:top + 1]) >= 0)
    assert act[top] == fwd


def test_peak_activation_is_linear_in_batch():
    # affine, not proportional: the positional ids (T int64) do not grow with the batch
    peaks = [peak_activations(one_step(CFG, B, 16)[0]) for B in (1, 2, 3, 5)]
    d = np.diff(peaks) / np.diff([1, 2, 3, 5])
    assert d[0] > 0 and np.all(d == d[0]), f"per-sample increments differ: {d}"
    assert peaks[0] - d[0] == 16 * 8


def test_peak_activation_is_linear_in_layers():
    peaks = []
    for L in (1, 2, 3, 4):
        cfg = GPTConfig(block_size=16, vocab_size=11, n_layer=L, n_head=2, n_embd=16)
        peaks.append(peak_activations(one_step(cfg, 2, 16)[0]))
    d = np.diff(peaks)
    assert d[0] > 0 and np.all(d == d[0]), f"per-layer increments differ: {d}"


def test_model_states_are_charged_by_category():
    dev, model, *_ = one_step(CFG, 2, 16)
    n = model.num_parameters()
    res = dev.memory.resident()
    assert res["parameters"] == 4 * n            # fp32 weights
    assert res["gradients"] == 4 * n             # grads still held (no zero_grad here)
    assert res["optimizer_states"] == 8 * n      # AdamW: exp_avg + exp_avg_sq
    model.zero_grad()
    assert dev.memory.resident()["gradients"] == 0


@pytest.mark.parametrize("L,C,H,T,B,V", [(2, 32, 4, 16, 3, 13), (3, 48, 2, 24, 2, 7)])
def test_step_flops_match_6ND_plus_attention(L, C, H, T, B, V):
    cfg = GPTConfig(block_size=T, vocab_size=V, n_layer=L, n_head=H, n_embd=C)
    dev, model, *_ = one_step(cfg, B, T)
    tokens = B * T
    n_matmul = 12 * L * C * C + V * C        # every weight that takes part in a matmul
    attention = 12 * L * C * T * tokens      # QKᵀ and PV, forward + backward (PaLM, app. B)
    assert dev.matmul_flops == 6 * n_matmul * tokens + attention
    N = model.num_parameters()
    total_formula = 6 * N * tokens + attention
    assert abs(dev.flops - total_formula) / total_formula < 0.05


def test_compute_clock_advances_by_flops_over_speed():
    dev, *_ = one_step(CFG, 2, 16)
    spec = get_spec("A100-80GB-NVLink")
    assert dev.clock.now("compute") == pytest.approx(dev.flops / spec.flops, rel=1e-9)


def test_out_of_memory_error_names_the_allocation_and_what_is_held():
    dev = Device({"memory": 10_000})
    with dev, pytest.raises(OutOfMemoryError) as err:
        GPT(CFG)
    msg = str(err.value)
    assert "out of memory" in msg and "for parameters" in msg and "[parameters=" in msg


def test_tracker_bookkeeping_and_bad_category():
    m = MemoryTracker(100)
    h = m.alloc(60, "buffers")
    with pytest.raises(OutOfMemoryError):
        m.alloc(41, "other")
    m.free(h)
    assert m.total == 0 and m.peak == 60 and m.peak_by_category["buffers"] == 60
    with pytest.raises(ValueError, match="unknown memory category"):
        m.alloc(1, "weights")


def test_bad_device_preset_is_named():
    with pytest.raises(ValueError, match="unknown device preset 'B200'"):
        Device("B200")
    with pytest.raises(ValueError, match="device.flops must be a positive number"):
        Device({"flops": -1})


def test_chrome_trace_export(tmp_path):
    dev, *_ = one_step(CFG, 1, 8)
    doc = export_chrome_trace([dev], tmp_path / "t.json")
    loaded = json.loads((tmp_path / "t.json").read_text())
    xs = [e for e in loaded["traceEvents"] if e["ph"] == "X"]
    assert len(xs) == len(dev.trace.events) and doc["traceEvents"][0]["ph"] == "M"
    assert sum(e["dur"] for e in xs if e["tid"] == "compute") == pytest.approx(dev.clock.now("compute") * 1e6)
    ends = [e["ts"] + e["dur"] for e in xs]
    assert all(b >= a - 1e-6 for a, b in zip(ends, ends[1:]))   # one stream: events in order
