"""Causal attention that skips the key blocks a block of queries cannot see
(minidist/ops/attention.py, ``CAUSAL_BLOCK``) against the one-block path, which is the
unblocked arithmetic: float64 to a few units in the last place (BLAS splits the shorter
sums elsewhere), the same saved bytes, the same dropout mask, and a gradcheck.
"""
import numpy as np
import pytest

import minidist.functional as F
from minidist import gradcheck as gc
from minidist.device import Device
from minidist.ops import attention
from minidist.tensor import Tensor

pytestmark = pytest.mark.engine


def test_query_blocks_cover_the_causal_triangle(monkeypatch):
    monkeypatch.setattr(attention, "CAUSAL_BLOCK", 64)
    assert attention._query_blocks(130, 130, True) == [(0, 64, 64), (64, 128, 128), (128, 130, 130)]
    assert attention._query_blocks(64, 64, True) == [(0, 64, 64)]           # T <= block: one block
    assert attention._query_blocks(130, 130, False) == [(0, 130, 130)]     # not causal: every key
    assert attention._query_blocks(5, 130, True) == [(0, 5, 130)]          # a KV cache: every key


def qkv_views(B, T, nh, hs, seed):
    """q, k, v as the model passes them: (B, T, nh, hs) slices of one qkv tensor, transposed."""
    qkv = np.random.default_rng(seed).standard_normal((B, T, 3 * nh * hs))
    return [Tensor(qkv[..., i * nh * hs:(i + 1) * nh * hs].reshape(B, T, nh, hs).swapaxes(1, 2),
                   requires_grad=True) for i in range(3)]


def attend(block, dropout_p, monkeypatch, B=3, T=18, nh=2, hs=5):
    monkeypatch.setattr(attention, "CAUSAL_BLOCK", block)
    monkeypatch.setattr(attention, "PASS_BYTES", 1)          # one sequence per pass: many passes
    q, k, v = qkv_views(B, T, nh, hs, seed=1)
    g = np.random.default_rng(2).standard_normal((B, nh, T, hs))
    dev = Device()
    with dev:
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True, dropout_p=dropout_p, rng=np.random.default_rng(3))
        saved = dev.memory.current["activations"]
        y.backward(g)
    return [y.data, q.grad, k.grad, v.grad], saved


@pytest.mark.parametrize("dropout_p", [0.0, 0.3])
def test_blocked_causal_attention_equals_one_block(dropout_p, monkeypatch):
    """Blocks of 4 over T = 18 (4, 4, 4, 4, 2: a ragged last block) vs one block of 18."""
    one, saved_one = attend(1000, dropout_p, monkeypatch)
    blocked, saved_blocked = attend(4, dropout_p, monkeypatch)
    assert saved_blocked == saved_one > 0          # the same probabilities (and mask) saved
    for a, b in zip(one, blocked):
        np.testing.assert_allclose(b, a, rtol=1e-13, atol=1e-15)


def test_blocked_causal_attention_gradcheck(monkeypatch):
    monkeypatch.setattr(attention, "CAUSAL_BLOCK", 2)
    inputs = [Tensor(np.random.default_rng(s).standard_normal((1, 2, 5, 3)), requires_grad=True) for s in range(3)]
    fn = lambda q, k, v: F.scaled_dot_product_attention(q, k, v, is_causal=True, dropout_p=0.3,  # noqa: E731
                                                           rng=np.random.default_rng(4))
    assert gc.gradcheck(fn, inputs) < 1e-6
