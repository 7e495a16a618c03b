"""The engine's fast paths against their plain versions: blocked attention, blocked GELU,
in-place layer norm, Adam's in-place blocked update, the embedding's vectorised backward.

The last section runs each one on inputs several 256 KB blocks long (the real block size,
not a patched one) against the plain formula written in the test, so that a block other
than the first cannot go wrong unseen.
"""
import numpy as np
import pytest
from _attention import reference_attention

import minidist.functional as F
from minidist import gradcheck as gc
from minidist import optim
from minidist.ops import activations, attention
from minidist.optim import Adam, AdamW
from minidist.tensor import Parameter, Tensor
from test_optim_oracle import adam_oracle

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
        F.scaled_dot_product_attention(*ts, is_causal=True).backward(g)
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


# -- several blocks long, against the formulas ------------------------------------------------
BLOCK = 256 * 1024                      # bytes: GELU's and Adam's block size


def elements_for_blocks(blocks: float, dtype) -> int:
    return int(blocks * BLOCK / np.dtype(dtype).itemsize)


def test_the_block_size_is_what_these_tests_assume():
    assert activations.BLOCK_BYTES == BLOCK and optim._BLOCK_BYTES == BLOCK


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_gelu_forward_and_backward_over_several_blocks(dtype):
    """GELU(x) = ½x(1 + tanh u), u = √(2/π)(x + 0.044715x³) (Hendrycks & Gimpel 2016);
    dGELU/dx = ½(1 + tanh u) + ½x(1 − tanh²u)·√(2/π)(1 + 3·0.044715x²)."""
    n = elements_for_blocks(3.5, dtype)                             # 3 whole blocks and a ragged one
    x = randn(n, dtype=dtype) * 3
    g = randn(n, seed=1, dtype=dtype)
    xt = Tensor(x.reshape(7, -1), requires_grad=True)
    y = F.gelu(xt)
    y.backward(g.reshape(7, -1))
    x64 = x.astype(np.float64)
    c = np.sqrt(2 / np.pi)
    t = np.tanh(c * (x64 + 0.044715 * x64 ** 3))
    want_y = 0.5 * x64 * (1 + t)
    want_dx = g * (0.5 * (1 + t) + 0.5 * x64 * (1 - t ** 2) * c * (1 + 3 * 0.044715 * x64 ** 2))
    if dtype == np.float64:
        np.testing.assert_allclose(y.data.ravel(), want_y, rtol=1e-12, atol=1e-14)
        np.testing.assert_allclose(xt.grad.ravel(), want_dx, rtol=1e-12, atol=1e-14)
    else:
        # float32: tanh's rounding (relative ε) reaches dx through 1 − t², multiplied by
        # ½|x|·d(inner)/dx; 16 roundings of slack on that and on the other terms
        eps = np.finfo(np.float32).eps
        amplification = 1 + np.abs(x64) * c * (1 + 3 * 0.044715 * x64 ** 2)
        assert np.all(np.abs(y.data.ravel() - want_y) <= 16 * eps * (1 + np.abs(want_y)))
        assert np.all(np.abs(xt.grad.ravel() - want_dx) <= 16 * eps * amplification * np.abs(g))
    last = slice(3 * elements_for_blocks(1, dtype), None)           # the ragged last block is right too
    assert np.abs(xt.grad.ravel()[last]).max() > 0.1


def test_layer_norm_forward_and_backward_over_several_blocks():
    """y = x̂·w + b, x̂ = (x − μ)/√(σ² + ε); dx = (ĝ − mean(ĝ) − x̂·mean(ĝ·x̂))/√(σ² + ε), ĝ = g·w
    (Ba et al. 2016), dw = Σ g·x̂, db = Σ g over the tokens."""
    rows, C = 3 * BLOCK // 8 // 96 + 5, 96                          # float64, > 3 blocks
    x = randn(rows, C) * 2 + 1
    w, b, g = randn(C, seed=1), randn(C, seed=2), randn(rows, C, seed=3)
    xt, wt, bt = Tensor(x, requires_grad=True), Parameter(w.copy()), Parameter(b.copy())
    y = F.layer_norm(xt, wt, bt)
    y.backward(g)
    rstd = 1 / np.sqrt(x.var(-1, keepdims=True) + 1e-5)
    xhat = (x - x.mean(-1, keepdims=True)) * rstd
    gh = g * w
    np.testing.assert_allclose(y.data, xhat * w + b, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(
        xt.grad, (gh - gh.mean(-1, keepdims=True) - xhat * (gh * xhat).mean(-1, keepdims=True)) * rstd,
        rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(wt.grad, (g * xhat).sum(0), rtol=1e-10)
    np.testing.assert_allclose(bt.grad, g.sum(0), rtol=1e-10)


@pytest.mark.parametrize("causal", [True, False])
def test_attention_forward_and_backward_over_several_sequences(causal):
    """The softmax walks one sequence at a time: B = 5 blocks. Formulas (Vaswani et al. 2017):
    P = softmax(QKᵀ/√d + mask), Y = PV; dV = PᵀdY, dP = dY Vᵀ, dS = P∘(dP − Σ_keys dP∘P),
    dQ = dS K/√d, dK = dSᵀQ/√d."""
    B, nh, T, hs = 5, 3, 24, 8
    q, k, v = (randn(B, nh, T, hs, seed=s) for s in range(3))
    g = randn(B, nh, T, hs, seed=3)
    ts = [Tensor(a, requires_grad=True) for a in (q, k, v)]
    y = F.scaled_dot_product_attention(*ts, is_causal=causal)
    y.backward(g)
    want = dict(zip(("y", "dq", "dk", "dv"), reference_attention(q, k, v, g, causal)))
    for name, got in zip(want, [y.data] + [t.grad for t in ts]):
        np.testing.assert_allclose(got, want[name], rtol=1e-10, atol=1e-12, err_msg=name)
        assert np.abs(got[-1]).max() > 0.1                          # the last sequence is computed too


@pytest.mark.parametrize("cls,hyper", [(Adam, {}), (Adam, {"weight_decay": 0.1}), (AdamW, {"weight_decay": 0.1})])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_adam_blocked_update_over_several_blocks(cls, hyper, dtype):
    """Adam's in-place block loop (real 256 KB blocks) against Kingma & Ba's rule in float64."""
    n = elements_for_blocks(3.3, dtype)
    theta = randn(n)
    grads = [randn(n, seed=10 + t) * 10.0 ** (t - 2) for t in range(3)]
    p = Parameter(theta.astype(dtype))
    opt = cls([p], lr=1e-2, **hyper)
    group = opt.param_groups[0]
    expect = adam_oracle(p.data.astype(np.float64), [g.astype(dtype).astype(np.float64) for g in grads], 1e-2,
                         group["betas"], group["eps"], group["weight_decay"], decoupled=cls is AdamW)
    # m sums terms of both signs, and with L2 decay g + wd·θ can cancel too: the states'
    # rounding errors are relative to the moments of the terms' sizes (Adam moves θ by at
    # most lr per step)
    l2 = 0.0 if cls is AdamW else group["weight_decay"]
    sizes = [np.abs(g.astype(dtype)) + l2 * (np.abs(theta) + 3e-2) for g in grads]
    moment_sizes = [(m, v) for _, m, v in adam_oracle(np.zeros(n), sizes, 1e-2, group["betas"])]
    eps = 1e-13 if dtype == np.float64 else np.finfo(np.float32).eps
    for t, (grad, (theta_t, m_t, v_t)) in enumerate(zip(grads, expect), start=1):
        p.grad = grad.astype(dtype)
        opt.step()
        # float64: the same rule; float32: a few roundings of values ~1 per step
        atol = 1e-14 if dtype == np.float64 else 8 * t * eps * np.abs(theta).max()
        err = np.abs(p.data - theta_t)
        assert err.max() <= atol, f"{cls.__name__} step {t}: element {err.argmax()} of {n} off by {err.max():.3g}"
        st = opt.state[id(p)]
        m_size, v_size = moment_sizes[t - 1]
        assert np.all(np.abs(st["exp_avg"] - m_t) <= 4 * t * eps * m_size)
        assert np.all(np.abs(st["exp_avg_sq"] - v_t) <= 4 * t * eps * v_size)


def test_embedding_backward_over_many_rows_against_the_plain_sum():
    """dW[i] = Σ of dY's rows whose id is i (and 0 for ids never used): 2 MB of gradient."""
    V, C = 50, 64
    ids = np.random.default_rng(1).integers(0, V - 3, (8, 512))    # the last 3 ids never occur
    ids[0, :100] = 7                                                # one id very frequent
    w = Parameter(randn(V, C))
    g = randn(8, 512, C, seed=2)
    F.embedding(ids, w).backward(g)
    want = np.stack([g[ids == i].sum(axis=0) for i in range(V)])
    np.testing.assert_allclose(w.grad, want, rtol=1e-12, atol=1e-12)
    assert not w.grad[-3:].any() and np.abs(w.grad[7]).max() > 1
