"""The engine's fast paths against their plain versions: blocked attention, blocked GELU,
in-place layer norm, Adam's in-place blocked update."""
import numpy as np
import pytest

import minidist.functional as F
from minidist import gradcheck as gc
from minidist.ops import activations, attention
from minidist.optim import Adam, AdamW
from minidist.tensor import Parameter, Tensor

pytestmark = pytest.mark.engine


def randn(*shape, seed=0, dtype=np.float64):
    return np.random.default_rng(seed).standard_normal(shape).astype(dtype)


# -- attention ------------------------------------------------------------------------------
@pytest.mark.parametrize("causal", [True, False])
def test_attention_matches_the_plain_formula(causal):
    q, k, v = (randn(3, 2, 7, 4, seed=s) for s in range(3))
    y = F.scaled_dot_product_attention(q, k, v, is_causal=causal)
    np.testing.assert_allclose(y.data, attention.attention_reference(q, k, v, causal), rtol=1e-12, atol=1e-14)


def test_attention_on_strided_heads_equals_contiguous():
    """The model passes q, k, v as (B, T, nh, hs) views transposed to (B, nh, T, hs)."""
    qkv = randn(2, 6, 3 * 8)
    views = [Tensor(qkv[..., i * 8:(i + 1) * 8].reshape(2, 6, 2, 4).swapaxes(1, 2), requires_grad=True)
             for i in range(3)]
    dense = [Tensor(np.ascontiguousarray(t.data), requires_grad=True) for t in views]
    g = randn(2, 2, 6, 4, seed=9)
    for ts in (views, dense):
        F.scaled_dot_product_attention(*ts).backward(g)
    for a, b in zip(views, dense):
        np.testing.assert_allclose(a.grad, b.grad, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("causal", [True, False])
def test_attention_gradient_non_causal_and_dropout(causal):
    inputs = [Tensor(randn(2, 2, 5, 3, seed=s), requires_grad=True) for s in range(3)]
    # a fresh generator per call: every evaluation draws the same dropout mask
    fn = lambda q, k, v: F.scaled_dot_product_attention(q, k, v, is_causal=causal, dropout_p=0.3,  # noqa: E731
                                                           rng=np.random.default_rng(4))
    assert gc.gradcheck(fn, inputs) < 1e-6


# -- GELU -------------------------------------------------------------------------------------
def gelu_whole(x):
    """GELU on the whole array at once, the same steps as the blocked version."""
    t = np.tanh((x * x * x * 0.044715 + x) * activations._GELU_C)
    return 0.5 * x * (1.0 + t)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_gelu_blocks_are_bit_identical_to_whole_array(dtype, monkeypatch):
    x = randn(5, 1000, dtype=dtype)
    g = randn(5, 1000, seed=1, dtype=dtype)
    ref = F.gelu(Tensor(x, requires_grad=True))
    ref.backward(g)
    monkeypatch.setattr(activations, "BLOCK_BYTES", 1000 * np.dtype(dtype).itemsize - 8)  # ragged blocks
    xt = Tensor(x, requires_grad=True)
    y = F.gelu(xt)
    y.backward(g)
    assert np.array_equal(y.data, ref.data)
    np.testing.assert_allclose(y.data, gelu_whole(x), rtol=1e-5 if dtype == np.float32 else 1e-13)


# -- layer norm ------------------------------------------------------------------------------
def test_layer_norm_matches_numpy_statistics():
    """(tests/test_torch_reference.py checks its gradients against PyTorch in float64.)"""
    x, w, b = randn(3, 4, 16), randn(16, seed=1), randn(16, seed=2)
    y = F.layer_norm(Tensor(x), Tensor(w), Tensor(b))
    mu, var = x.mean(-1, keepdims=True), x.var(-1, keepdims=True)
    np.testing.assert_allclose(y.data, (x - mu) / np.sqrt(var + 1e-5) * w + b, rtol=1e-12, atol=1e-13)


def test_layer_norm_without_weight_equals_unit_weight():
    x, g = randn(2, 3, 5), randn(2, 3, 5, seed=1)
    g0 = g.copy()
    plain, unit = Tensor(x, requires_grad=True), Tensor(x, requires_grad=True)
    F.layer_norm(plain).backward(g)
    F.layer_norm(unit, Tensor(np.ones(5)), Tensor(np.zeros(5))).backward(g)
    np.testing.assert_allclose(plain.grad, unit.grad, rtol=1e-13, atol=1e-15)
    assert np.array_equal(g, g0)                                  # the incoming gradient is left alone


# -- Adam ------------------------------------------------------------------------------------
@pytest.mark.parametrize("cls,hyper", [(AdamW, {}), (Adam, {"weight_decay": 0.1}), (Adam, {})])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_adam_blocked_update_is_bit_identical_to_reference(cls, hyper, dtype, monkeypatch):
    monkeypatch.setattr("minidist.optim._BLOCK_BYTES", 1000)     # many ragged blocks
    p0 = randn(3001, dtype=dtype)
    fast, ref = Parameter(p0.copy()), Parameter(p0.copy())
    of, orf = cls([fast], **hyper), cls([ref], **hyper)
    for step in range(3):
        g = randn(3001, seed=10 + step, dtype=dtype)
        of.update(fast.data, g, of.state_for(fast), of.param_groups[0])
        orf._update_reference(ref.data, g, orf.state_for(ref), orf.param_groups[0])
    assert np.array_equal(fast.data, ref.data)
    for key in ("exp_avg", "exp_avg_sq"):
        assert np.array_equal(of.state[id(fast)][key], orf.state[id(ref)][key])


def test_adam_on_a_strided_parameter_falls_back_to_reference():
    base = randn(4, 6)
    view = base[:, ::2]                                          # not contiguous
    expect = view.copy()
    g = randn(4, 3, seed=1)
    opt = AdamW([Parameter(expect)])
    opt.update(view, g, opt.init_state(view.shape, view.dtype), opt.param_groups[0])
    ref = AdamW([Parameter(expect)])
    ref._update_reference(expect, g, ref.init_state(view.shape, view.dtype), ref.param_groups[0])
    assert np.array_equal(view, expect)


# -- embedding -------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_embedding_backward_is_bit_identical_to_add_at(dtype):
    ids = np.random.default_rng(1).integers(0, 7, (4, 9))            # repeated ids, one id unused
    ids[ids == 3] = 2
    w = Parameter(randn(7, 5, dtype=dtype))
    g = randn(4, 9, 5, seed=2, dtype=dtype)
    F.embedding(ids, w).backward(g)
    want = np.zeros_like(w.data)
    np.add.at(want, ids.ravel(), g.reshape(-1, 5))
    assert np.array_equal(w.grad, want)
