"""The engine's second round of fast paths (issue 24) against the arithmetic they replaced,
bit for bit: attention's keys-first score layout against the heads-first one, layer norm's
fused passes and linear's bias add against their step-by-step versions.

(The speed itself is measured by benchmarks/bench_engine.py, never timed here.)
"""
import numpy as np
import pytest

import minidist.functional as F
from minidist.ops import attention
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
