"""Every op's backward against central finite differences in float64."""
import numpy as np
import pytest

import minidist.functional as F
from minidist import gradcheck as gc
from minidist.model import GPT, GPTConfig
from minidist.tensor import Parameter, Tensor

pytestmark = pytest.mark.engine
rng = np.random.default_rng(0)


def T(*shape, positive=False):
    a = rng.standard_normal(shape)
    return Tensor(np.abs(a) + 0.5 if positive else a, requires_grad=True)


CASES = {
    "add_broadcast": (lambda a, b: a + b, [T(3, 4), T(4)]),
    "sub_broadcast": (lambda a, b: a - b, [T(2, 3, 4), T(3, 1)]),
    "mul_broadcast": (lambda a, b: a * b, [T(3, 4), T(1, 4)]),
    "div": (lambda a, b: a / b, [T(3, 4), T(3, 4, positive=True)]),
    "neg_pow": (lambda a: -(a ** 3), [T(5)]),
    "exp_log_tanh": (lambda a: F.tanh(F.log(F.exp(a) + 1.0)), [T(3, 4)]),
    "matmul_batched": (lambda a, b: a @ b, [T(2, 3, 4, 5), T(5, 2)]),
    "linear": (lambda x, w, b: F.linear(x, w, b), [T(2, 3, 4), T(4, 5), T(5)]),
    "reshape_transpose": (lambda a: a.reshape(2, 6).transpose(0, 1) * 2.0, [T(3, 4)]),
    "getitem_fancy": (lambda a: a[np.array([0, 2, 0])], [T(3, 4)]),
    "getitem_slice": (lambda a: a[:, 1:3], [T(3, 4)]),
    "split_concat": (lambda a: F.concat(a.split(2, axis=1)[::-1], axis=1), [T(3, 6)]),
    "sum_mean_axis": (lambda a: a.sum(axis=1) + a.mean(axis=(0, 1)) + a.mean(axis=2, keepdims=True).sum(axis=1), [T(2, 3, 4)]),
    "max_axis": (lambda a: a.max(axis=-1), [T(3, 5)]),
    "softmax": (lambda a: F.softmax(a, axis=-1), [T(3, 5)]),
    "log_softmax": (lambda a: F.log_softmax(a, axis=0), [T(4, 3)]),
    "layer_norm": (lambda x, w, b: F.layer_norm(x, w, b), [T(2, 3, 6), T(6), T(6)]),
    "gelu": (lambda a: F.gelu(a), [T(4, 5)]),
    "embedding": (lambda w: F.embedding(np.array([[1, 3, 1]]), w), [T(5, 4)]),
    "attention": (lambda q, k, v: F.scaled_dot_product_attention(q, k, v, is_causal=True),
                  [T(2, 2, 5, 3), T(2, 2, 5, 3), T(2, 2, 5, 3)]),
    "cross_entropy_ignore": (lambda z: F.cross_entropy(z, np.array([1, -1, 4, 0]), ignore_index=-1), [T(4, 5)]),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_op_gradient(name):
    fn, inputs = CASES[name]
    assert gc.gradcheck(fn, inputs) < 1e-6


def test_dropout_gradient_uses_the_same_mask():
    x = T(6, 7)
    err = gc.gradcheck(lambda a: F.dropout(a, 0.3, True, np.random.default_rng(1)), [x])
    assert err < 1e-6


def test_whole_tiny_gpt_gradient_float64():
    cfg = GPTConfig(block_size=6, vocab_size=7, n_layer=2, n_head=2, n_embd=8)
    model = GPT(cfg, seed=3, dtype=np.float64)
    idx = np.random.default_rng(1).integers(0, 7, (2, 6))
    tgt = np.random.default_rng(2).integers(0, 7, (2, 6))
    params = model.parameters()
    _, loss = model(idx, tgt)
    loss.backward()
    worst = 0.0
    for p in params:
        ana = p.grad.copy()

        def f():
            return float(model(idx, tgt)[1].data)
        num = gc.numerical_grad(f, p.data, eps=1e-5)
        err = np.abs(num - ana).max() / (np.abs(num).max() + 1e-12)
        worst = max(worst, err)
        assert err < 1e-6, f"{p.name}: relative error {err:.2e}"
    assert worst < 1e-6


def test_gradcheck_reports_a_wrong_gradient():
    # an op with a deliberately wrong backward must be caught, with the input named
    from minidist.tensor import make_result

    def bad_square(a):
        return make_result(a.data ** 2, (a,), lambda g, needs: (g * a.data,), "bad")
    x = T(3)
    x.name = "x"
    with pytest.raises(AssertionError, match="input 0 \\(x\\)"):
        gc.gradcheck(bad_square, [x])


def test_weight_gradient_can_be_deferred():
    x, w = Tensor(rng.standard_normal((4, 3)), requires_grad=True), Parameter(rng.standard_normal((3, 2)))
    y = F.gelu(F.linear(x, w))
    g = rng.standard_normal(y.shape)
    work = y.backward(g, defer_weight_grad=True)
    assert x.grad is not None and w.grad is None      # B pass: input gradient only
    work.run()                                         # W pass
    x2, w2 = Tensor(x.data.copy(), requires_grad=True), Parameter(w.data.copy())
    F.gelu(F.linear(x2, w2)).backward(g)
    np.testing.assert_allclose(w.grad, w2.grad, rtol=1e-12)
    np.testing.assert_allclose(x.grad, x2.grad, rtol=1e-12)


@pytest.mark.parametrize("call,match", [
    (lambda: F.linear(Tensor(np.zeros((2, 3))), Tensor(np.zeros((4, 5)))), "input has 3 features but weight is"),
    (lambda: F.matmul(Tensor(np.zeros((2, 3))), Tensor(np.zeros((4, 2)))), "not aligned"),
    (lambda: F.cross_entropy(Tensor(np.zeros((2, 5))), np.array([1, 7])), "target 7 out of range for 5 classes"),
    (lambda: F.embedding(np.array([0, 9]), Tensor(np.zeros((4, 2)))), "index 9 out of range for a table of 4 rows"),
    (lambda: GPT(GPTConfig(block_size=4, vocab_size=5, n_layer=1, n_head=1, n_embd=4))(np.zeros((1, 6), int)),
     "sequence length 6 exceeds block_size 4"),
    (lambda: GPTConfig(n_embd=10, n_head=4), "must be divisible by model.n_head"),
    (lambda: Tensor(np.zeros(3), requires_grad=True).reshape(3, 1).backward(), "implicitly created only for scalar"),
])
def test_bad_input_gives_a_clear_error(call, match):
    with pytest.raises((ValueError, IndexError, RuntimeError), match=match):
        call()


def test_no_grad_records_nothing():
    from minidist import no_grad
    w = Parameter(np.ones((2, 2)))
    with no_grad():
        y = F.linear(Tensor(np.ones((1, 2))), w)
    assert not y.requires_grad and y._ctx is None


@pytest.mark.parametrize("fmt", ["fp16", "bf16", "fp8_e4m3"])
def test_max_along_an_axis_under_autocast_sends_the_gradient_to_the_maximum(fmt):
    """Under autocast the reduced output is rounded; the backward's mask comes from the input's
    own maximum, not from that rounded value (which equals no element: 0/0 everywhere)."""
    from minidist.autocast import autocast
    x = Tensor(np.array([[0.1, 0.3, 0.2], [0.7, 0.5, 0.6]], dtype=np.float32), requires_grad=True)
    with autocast(fmt):
        y = F.max(x, axis=-1)
    y.sum().backward()
    np.testing.assert_array_equal(x.grad, [[0, 1, 0], [1, 0, 0]])


@pytest.mark.parametrize("p", [1.0, 1.5, -0.5, float("nan")])
def test_attention_refuses_a_dropout_probability_outside_0_1(p):
    from minidist import distributed as dist
    from minidist.parallel.context.ring import ring_attention
    q = Tensor(np.random.default_rng(0).standard_normal((1, 2, 4, 3)))
    with pytest.raises(ValueError, match=r"dropout probability must be in \[0, 1\)"):
        F.scaled_dot_product_attention(q, q, q, is_causal=True, dropout_p=p, rng=np.random.default_rng(0))
    errors = dist.spawn(lambda c: _refusal(lambda: ring_attention(q, q, q, c, dropout_p=p, rng=np.random.default_rng(0))),
                        2, timeout=10)
    assert all(e.startswith("dropout probability must be in [0, 1)") for e in errors), errors


def _refusal(call) -> str:
    try:
        call()
    except ValueError as exc:
        return str(exc)
    return "accepted"


def test_a_second_backward_through_a_freed_graph_raises_instead_of_dropping_gradients():
    """As PyTorch: backward frees the graph; going through it again without retain_graph=True
    is an error (it used to take the freed tensor for a leaf and add nothing to x.grad)."""
    x = Tensor(np.array([1.0, 2.0]), requires_grad=True)
    h = x * 2.0
    loss = h.sum()
    loss.backward()
    for again in (lambda: (h * 3.0).sum().backward(), loss.backward):
        with pytest.raises(RuntimeError, match="backward through the graph a second time; pass retain_graph=True"):
            again()
    np.testing.assert_array_equal(x.grad, [2.0, 2.0])
    y = x * 2.0
    y.sum().backward(retain_graph=True)
    (y * 3.0).sum().backward()
    np.testing.assert_array_equal(x.grad, [2.0 + 2.0 + 6.0, 2.0 + 2.0 + 6.0])


def test_a_bias_of_the_wrong_length_is_refused_naming_the_shapes():
    x, w = Tensor(np.zeros((2, 6))), Tensor(np.zeros((6, 8)))
    for n in (4, 16):                             # both divide the rows: they used to be tiled silently
        with pytest.raises(ValueError, match=rf"linear: bias has shape \({n},\) but the weight \(6, 8\) gives 8"):
            F.linear(x, w, Tensor(np.arange(float(n))))
    with pytest.raises(ValueError, match=r"layer_norm: bias shape \(3,\) != normalised shape \(6,\)"):
        F.layer_norm(x, Tensor(np.ones(6)), Tensor(np.ones(3)))


def test_the_gradient_of_x_to_the_power_zero_is_zero_at_zero():
    x = Tensor(np.array([0.0, 2.0, -1.5]), requires_grad=True)
    (x ** 0).sum().backward()
    np.testing.assert_array_equal(x.grad, [0.0, 0.0, 0.0])
