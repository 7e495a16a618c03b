"""The engine's second round of fast paths (issue 24) against the arithmetic they replaced,
bit for bit: attention's keys-first score layout against the heads-first one; layer norm's
and linear's vector broadcasts run over long rows (``linalg.wide_rows``) against the plain
broadcasts.

(The speed itself is measured by benchmarks/bench_engine.py, never timed here.)
"""
import numpy as np
import pytest

import minidist.functional as F
from minidist.ops import attention, linalg
from minidist.tensor import Tensor

pytestmark = pytest.mark.engine


def randn(*shape, seed=0, dtype=np.float64):
    return np.random.default_rng(seed).standard_normal(shape).astype(dtype)


# -- attention: keys-first scores -------------------------------------------------------------
def attend(monkeypatch, keys_first, shape, Tk, causal, dropout_p, dtype, block, pass_bytes):
    """Output and input gradients; ``keys_first=False`` lays every block out heads first
    (n, nh, keys, w), the layout every product and softmax step used before."""
    monkeypatch.setattr(attention, "KEYS_FIRST_MIN_WIDTH", 4 if keys_first else 10**9)
    monkeypatch.setattr(attention, "CAUSAL_BLOCK", block)
    monkeypatch.setattr(attention, "PASS_BYTES", pass_bytes)
    B, nh, T, hs = shape
    q = Tensor(randn(B, nh, T, hs, seed=1, dtype=dtype), requires_grad=True)
    k, v = (Tensor(randn(B, nh, Tk, hs, seed=s, dtype=dtype), requires_grad=True) for s in (2, 3))
    y = F.scaled_dot_product_attention(q, k, v, is_causal=causal, dropout_p=dropout_p,
                                       rng=np.random.default_rng(4))
    y.backward(randn(B, nh, T, hs, seed=5, dtype=dtype))
    return [y.data, q.grad, k.grad, v.grad]


CASES = [((8, 8, 128, 32), 128, True, 64, 768 * 1024),   # the benchmark's model: 3 sequences a pass
         ((3, 2, 18, 5), 18, True, 4, 1),                 # blocks 4, 4, 4, 4, 2: a narrow last block
         ((2, 3, 100, 16), 100, True, 7, 3000),           # ragged passes and blocks
         ((5, 3, 77, 9), 77, True, 5, 2000),
         ((2, 2, 20, 4), 20, False, 64, 1),               # not causal: one block
         ((2, 2, 3, 8), 11, True, 64, 1),                 # a KV cache: 3 queries, 11 keys
         ((1, 4, 1, 8), 9, True, 64, 1)]                  # one decoded token


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("dropout_p", [0.0, 0.3])
@pytest.mark.parametrize("shape, Tk, causal, block, pass_bytes", CASES)
def test_keys_first_scores_equal_heads_first_bit_for_bit(monkeypatch, shape, Tk, causal, block, pass_bytes,
                                                         dropout_p, dtype):
    args = (shape, Tk, causal, dropout_p, dtype, block, pass_bytes)
    heads_first = attend(monkeypatch, False, *args)
    keys_first = attend(monkeypatch, True, *args)
    for a, b in zip(heads_first, keys_first):
        assert np.array_equal(a, b)


@pytest.mark.parametrize("shape, Tk, causal, block, pass_bytes", CASES)
def test_keys_first_attention_matches_the_plain_formula(monkeypatch, shape, Tk, causal, block, pass_bytes):
    y = attend(monkeypatch, True, shape, Tk, causal, 0.0, np.float64, block, pass_bytes)[0]
    B, nh, T, hs = shape
    want = attention.attention_reference(randn(B, nh, T, hs, seed=1), randn(B, nh, Tk, hs, seed=2),
                                         randn(B, nh, Tk, hs, seed=3), causal)
    np.testing.assert_allclose(y, want, rtol=1e-12, atol=1e-14)


# -- layer norm and linear's bias: vector broadcasts over long rows ---------------------------
def layer_norm_step_by_step(x, w, b, g, eps=1e-5):
    """y, dx, dw, db with the broadcasts written plainly (a loop per row), step for step."""
    xc = x - x.mean(axis=-1, keepdims=True)
    rstd = 1.0 / np.sqrt((xc * xc).mean(axis=-1, keepdims=True) + eps)
    xhat = xc * rstd
    y = xhat * w + b if w is not None else xhat.copy()
    gh = g * w if w is not None else g.copy()
    c = (gh * xhat).mean(axis=-1, keepdims=True)
    gh -= gh.mean(axis=-1, keepdims=True)
    gh -= xhat * c
    gh *= rstd
    lead = tuple(range(x.ndim - 1))
    return y, gh, (g * xhat).sum(axis=lead) if w is not None else None, g.sum(axis=lead) if w is not None else None


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", [(8, 128, 256), (6, 10, 100), (5, 33), (3, 1, 8)])
@pytest.mark.parametrize("order", ["C", "F"])
@pytest.mark.parametrize("affine", [True, False])
def test_layer_norm_equals_the_step_by_step_arithmetic(dtype, shape, order, affine):
    x = np.asarray(randn(*shape, dtype=dtype) * 3 + 1, order=order)
    g = np.asarray(randn(*shape, seed=1, dtype=dtype), order=order)
    w, b = (randn(shape[-1], seed=s, dtype=dtype) for s in (2, 3))
    xt = Tensor(x, requires_grad=True)
    wt, bt = (Tensor(a, requires_grad=True) if affine else None for a in (w, b))
    y = F.layer_norm(xt, wt, bt)
    y.backward(g)
    want = layer_norm_step_by_step(x, w if affine else None, b, g)
    assert np.array_equal(y.data, want[0]) and np.array_equal(xt.grad, want[1])
    if affine:
        assert np.array_equal(wt.grad, want[2]) and np.array_equal(bt.grad, want[3])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape, n", [((8, 128, 256), 768), ((3, 7, 24), 65), ((5, 33), 1)])
def test_linear_bias_equals_the_plain_broadcast(dtype, shape, n):
    x, w = randn(*shape, dtype=dtype), randn(shape[-1], n, seed=1, dtype=dtype)
    b, g = randn(n, seed=2, dtype=dtype), randn(*shape[:-1], n, seed=3, dtype=dtype)
    xt, wt, bt = (Tensor(a, requires_grad=True) for a in (x, w, b))
    y = F.linear(xt, wt, bt)
    y.backward(g)
    want = np.matmul(x.reshape(-1, shape[-1]), w)
    want += b
    assert np.array_equal(y.data, want.reshape(y.shape))
    assert np.array_equal(bt.grad, g.reshape(-1, n).sum(axis=0))


def test_wide_rows_views_the_array_and_tiles_the_vector():
    a, v = np.arange(24.0 * 256).reshape(24, 256), np.arange(256.0)
    wide, tiled = linalg.wide_rows(a, v)
    assert wide.shape == (3, 8 * 256) and np.shares_memory(wide, a) and np.array_equal(tiled, np.tile(v, 8))
    assert linalg.wide_rows(a.T.copy().T, v)[0].shape == (24, 256)          # not C order: as it is
    assert linalg.wide_rows(np.ones((7, 5)), np.ones(5))[0].shape == (7, 5)  # an odd row count: k = 1
