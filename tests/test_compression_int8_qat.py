"""int8 × int8 → int32 equals the exact integer product; W8A8 layers equal their formula; static,
percentile and dynamic calibration; QAT's gradients follow the straight-through estimator and the
deployed model equals the fake-quant one (issue 26)."""
import numpy as np
import pytest

from minidist import functional as F
from minidist.compression import int_matmul, ptq, qat
from minidist.compression.quantize import quantize, range_params
from minidist.compression.targets import copy_model, linear_layers, measure
from minidist.device import Device
from minidist.model import GPT, GPTConfig
from minidist.nn import Linear
from minidist.tensor import Tensor

pytestmark = pytest.mark.compression

CFG = GPTConfig(block_size=16, vocab_size=20, n_layer=2, n_head=4, n_embd=16)


def exact(a, b):
    """The product in Python integers (no overflow, no floats)."""
    return np.array(a, dtype=object) @ np.array(b, dtype=object)


@pytest.mark.parametrize("m, k, n", [(1, 1, 1), (5, 7, 3), (33, 64, 17)])
def test_int8_matmul_is_the_exact_integer_product(m, k, n):
    rng = np.random.default_rng(k)
    a = rng.integers(-128, 128, (m, k)).astype(np.int8)
    b = rng.integers(-128, 128, (k, n)).astype(np.int8)
    got = int_matmul.int8_matmul(a, b)
    assert got.dtype == np.int32 and (got.astype(object) == exact(a, b)).all()


def test_int32_accumulator_exact_up_to_its_limit_and_refused_beyond():
    k = int_matmul.MAX_K
    a = np.full((1, k), -128, np.int8)
    got = int_matmul.int8_matmul(a, a.T.copy())
    assert int(got[0, 0]) == k * 128 * 128 <= 2 ** 31 - 1
    with pytest.raises(ValueError, match="overflow an int32 accumulator"):
        int_matmul.int8_matmul(np.zeros((1, k + 1), np.int8), np.zeros((k + 1, 1), np.int8))
    with pytest.raises(TypeError, match="int8 operands"):
        int_matmul.int8_matmul(np.zeros((2, 2), np.int16), np.zeros((2, 2), np.int8))


def test_w8a8_linear_equals_scales_times_the_zero_point_corrected_integer_sum():
    rng = np.random.default_rng(0)
    x = rng.normal(0.3, 1.0, (6, 12)).astype(np.float32)
    w = rng.normal(0, 0.1, (12, 5)).astype(np.float32)
    bias = rng.normal(size=5).astype(np.float32)
    wq = quantize(w, 8, "symmetric", "channel")
    s_x, z_x = range_params(x.min(), x.max(), 8, "asymmetric")
    y = int_matmul.w8a8_linear(x, wq.q, wq.scale, float(s_x), int(z_x), bias)
    q_x = np.clip(np.rint(x.astype(np.float64) / s_x) + z_x, -128, 127).astype(int)
    acc = exact(q_x - int(z_x), wq.q.astype(int))                       # Σ (q_x − z_x)·q_w, exact
    want = np.array([[np.float32(float(s_x) * float(wq.scale[j]) * int(acc[i, j]) + float(bias[j]))
                      for j in range(5)] for i in range(6)])
    assert np.allclose(y, want, rtol=1e-6, atol=1e-6)
    assert np.abs(y - (x @ w + bias)).max() < 0.05                      # and close to the float layer


def test_int8_matmul_is_charged_at_twice_the_dense_rate():
    dev = Device("A100-80GB-NVLink")
    a, b = np.ones((4, 8), np.int8), np.ones((8, 3), np.int8)
    with dev:
        int_matmul.int8_matmul(a, b)
    assert dev.flops_by_op == {"int8_matmul": 2 * 4 * 8 * 3} and dev.matmul_flops == 192
    assert dev.clock.now("compute") == pytest.approx(192 / (2 * 312e12))


def _batches(n, seed=0, b=3):
    rng = np.random.default_rng(seed)
    return [(rng.integers(0, CFG.vocab_size, (b, 8)), rng.integers(0, CFG.vocab_size, (b, 8))) for _ in range(n)]


def _inputs(model, batches, kind=Linear):
    """Each linear layer's inputs over ``batches``, recorded by a forward hook."""
    seen = {}
    hooks = [lin.register_forward_pre_hook(lambda m, args, n=name: seen.setdefault(n, []).append(args[0].data))
             for name, _, _, lin in linear_layers(model, kind)]
    for x, _ in batches:
        model(x)
    for h in hooks:
        h.remove()
    return {n: np.concatenate([a.reshape(-1) for a in v]) for n, v in seen.items()}


@pytest.mark.parametrize("observer, kw", [("minmax", {}), ("percentile", {"percentile": 99.0})])
def test_static_calibration_fixes_each_layers_range_from_the_calibration_batches(observer, kw):
    model = GPT(CFG, seed=1).eval()
    cal = _batches(3)
    inputs = _inputs(model, cal)
    q = ptq.convert(ptq.calibrate(ptq.prepare(copy_model(model), observer, **kw), cal))
    for name, _, _, layer in linear_layers(q, ptq.QuantizedLinear):
        v = inputs[name]
        lo, hi = (v.min(), v.max()) if observer == "minmax" else np.percentile(v.astype(np.float64), [1.0, 99.0])
        scale, zp = range_params(lo, hi, 8, "asymmetric")
        assert layer.activations == (float(scale), int(zp))
        assert (layer.weight_q.q == quantize(model.state_dict()[name + ".weight"], 8, "symmetric", "channel").q).all()
    x = cal[0][0]
    assert np.abs(q(x)[0].data - model(x)[0].data).max() < 0.05


def test_dynamic_quantization_uses_each_batchs_own_range():
    model = GPT(CFG, seed=2).eval()
    dyn = ptq.quantize_dynamic(copy_model(model))
    (x, _), = _batches(1, seed=5)
    inputs = _inputs(dyn, [(x, None)], ptq.QuantizedLinear)          # what each of its layers sees
    out = dyn(x)[0].data
    # the same layers with the range of exactly this batch's inputs, fixed: the same outputs
    fixed = copy_model(model)
    for name, parent, attr, lin in linear_layers(fixed):
        s, z = range_params(inputs[name].min(), inputs[name].max(), 8, "asymmetric")
        setattr(parent, attr, ptq.QuantizedLinear(quantize(lin.weight.data, 8, "symmetric", "channel"),
                                                  lin.bias.data, (float(s), int(z))))
    assert (fixed(x)[0].data == out).all()
    (x2, _), = _batches(1, seed=6, b=2)                                 # another batch: another range
    assert not np.array_equal(fixed(x2)[0].data, dyn(x2)[0].data)


def test_fake_quant_gradient_is_straight_through_inside_the_range_and_zero_where_clamped():
    x = Tensor(np.array([-3.0, -1.0, 0.0, 0.4, 2.0, 5.0], np.float32), requires_grad=True)
    scale, zp = range_params(-2.0, 2.0, 8, "asymmetric")                # a fixed range: −3 and 5 clamp
    y = qat.fake_quant(x, float(scale), int(zp), 8, "asymmetric")
    g = np.arange(1, 7, dtype=np.float32)
    y.backward(g)
    codes = np.rint(x.data / scale) + zp
    inside = (codes >= -128) & (codes <= 127)
    assert inside.tolist() == [False, True, True, True, True, False]
    assert x.grad.tolist() == (g * inside).tolist()
    assert y.data[0] == np.float32(scale * (-128 - zp)) and y.data[-1] == np.float32(scale * (127 - zp))


@pytest.mark.parametrize("bits, gran, group", [(4, "channel", None), (2, "group", 8), (3, "tensor", None)])
def test_qat_weight_gradient_is_the_gradient_at_the_quantized_weights(bits, gran, group):
    """STE: ∂L/∂w = ∂L/∂ŵ — what a float layer holding ŵ would get."""
    rng = np.random.default_rng(bits)
    lin = Linear.from_arrays(rng.normal(0, 0.1, (16, 6)).astype(np.float64), np.zeros(6))
    x = rng.normal(size=(5, 16))
    layer = qat.QATLinear(lin, bits, "symmetric", gran, group)
    (layer(Tensor(x)) ** 2).sum().backward()
    w_hat = Tensor(quantize(lin.weight.data, bits, "symmetric", gran, group).dequantize(np.float64),
                   requires_grad=True)
    (F.linear(Tensor(x), w_hat, lin.bias.data) ** 2).sum().backward()
    assert np.array_equal(lin.weight.grad, w_hat.grad)
    assert layer.weight is lin.weight                                   # the optimizer's parameter


def test_qat_trains_in_the_trainer_and_deploys_to_the_same_outputs():
    from minidist.training.trainer import Trainer
    tr = Trainer({"steps": 3, "model": {"n_layer": 1, "n_embd": 16, "n_head": 2, "block_size": 16},
                  "data": {"seq_len": 16}, "train_micro_batch_size_per_gpu": 2, "eval_iters": 1})
    before = {n: p.data.copy() for n, p in tr.model.named_parameters()}
    qat.prepare_qat(tr.model, 4)
    assert len(linear_layers(tr.model, qat.QATLinear)) == 4 and not linear_layers(tr.model)
    tr.fit(progress=False)
    moved = [n for n, p in tr.model.named_parameters() if not np.array_equal(before[n], p.data)]
    assert any(n.endswith("c_fc.weight") for n in moved)                  # the shared weights trained
    x = tr.val_dataset.eval_batches(2, 1)[0][0]
    fake = tr.model.eval()(x)[0].data
    deployed = qat.convert_qat(tr.model)(x)[0].data
    assert np.array_equal(fake, deployed)


def test_qat_with_8_bit_inputs_deploys_as_w8a8():
    model = GPT(CFG, seed=3)
    cal = _batches(2)
    qat.prepare_qat(model, 8, calibration=cal)
    x = cal[0][0]
    fake = model.eval()(x)[0].data
    deployed = qat.convert_qat(model)
    assert all(lay.activations is not None for _, _, _, lay in linear_layers(deployed, ptq.QuantizedLinear))
    assert np.abs(deployed(x)[0].data - fake).max() < 1e-4
    with pytest.raises(ValueError, match="deploy as W8A8"):
        qat.prepare_qat(GPT(CFG), 4, calibration=cal)


def test_quantized_weights_cost_their_packed_bytes_and_w8a8_runs_on_int8_units():
    model = GPT(CFG, seed=0)
    (x, _), = _batches(1)
    dense = measure(copy_model(model), x)
    int4 = measure(ptq.quantize_weights(copy_model(model), lambda w: quantize(w, 4, "symmetric", "channel")), x)
    linear_weights = sum(lin.weight.size for _, _, _, lin in linear_layers(model))
    scales = sum(lin.weight.shape[1] for _, _, _, lin in linear_layers(model))
    assert dense.parameter_bytes == 4 * model.num_parameters()
    assert dense.parameter_bytes - int4.parameter_bytes == 4 * linear_weights - (linear_weights // 2 + 4 * scales)
    assert int4.matmul_flops == dense.matmul_flops and int4.flops > dense.flops     # + the dequantize
    w8a8 = measure(ptq.quantize_dynamic(copy_model(model)), x)
    assert w8a8.flops_by_op["int8_matmul"] == dense.flops_by_op["linear"] and "linear" not in w8a8.flops_by_op
    assert w8a8.time < dense.time
