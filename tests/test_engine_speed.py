"""The engine's speed work changes no number: accounting off (``Device(accounting=False)``)
gives the same losses, gradients and weights bit for bit, and every fused or reordered
kernel equals the step-by-step arithmetic it replaced, to the last bit.

(The speed itself is measured by benchmarks/bench_engine.py, never timed here.)
"""
import numpy as np
import pytest

import minidist.functional as F
from minidist.device import Device
from minidist.memory import MemoryTracker
from minidist.model import GPT, GPTConfig
from minidist.ops import activations
from minidist.optim import AdamW
from minidist.tensor import Tensor, no_grad

pytestmark = pytest.mark.engine


def randn(*shape, seed=0, dtype=np.float64):
    return np.random.default_rng(seed).standard_normal(shape).astype(dtype)


# -- accounting off ---------------------------------------------------------------------------
def train(accounting: bool, steps: int = 2):
    """Two AdamW steps of a tiny GPT on a device with its accounting on or off."""
    dev = Device(accounting=accounting)
    with dev:
        model = GPT(GPTConfig(n_layer=2, n_embd=32, n_head=4, block_size=16, vocab_size=11), seed=3)
        opt = AdamW(model.parameters(), lr=1e-2)
    rng = np.random.default_rng(0)
    x, y = rng.integers(0, 11, (3, 16)), rng.integers(0, 11, (3, 16))
    losses, grads = [], []
    for _ in range(steps):
        with dev:
            _, loss = model(x, y)
            loss.backward()
            grads.append({n: p.grad.copy() for n, p in model.named_parameters()})
            opt.step()
            opt.zero_grad()
        losses.append(loss.data.copy())
    return dev, model, losses, grads


def test_accounting_off_changes_no_number_and_counts_nothing():
    on, model_on, losses_on, grads_on = train(True)
    off, model_off, losses_off, grads_off = train(False)
    for a, b in zip(losses_on, losses_off):
        assert np.array_equal(a, b)
    for ga, gb in zip(grads_on, grads_off):
        assert ga.keys() == gb.keys() and all(np.array_equal(ga[n], gb[n]) for n in ga)
    for (n, a), (_, b) in zip(model_on.named_parameters(), model_off.named_parameters()):
        assert np.array_equal(a.data, b.data), n
    # on: everything counted; off: nothing
    assert on.flops > 0 and on.memory.peak > 0 and on.clock.time > 0 and on.trace.events
    assert on.memory.peak_by_category["optimizer_states"] > 0
    assert off.flops == 0 and off.matmul_flops == 0 and not off.flops_by_op
    assert off.memory.peak == 0 and off.memory.total == 0 and not off.memory.timeline
    assert off.clock.time == 0 and not off.trace.events and not off._saved


def test_a_disabled_tracker_records_nothing_and_never_runs_out():
    mem = MemoryTracker(capacity=10, enabled=False)
    handle = mem.alloc(10**12, "activations")                 # far over capacity: no error
    assert handle is None
    mem.free(handle)
    assert mem.total == mem.peak == 0 and not mem.timeline and not mem.live()
    with pytest.raises(ValueError, match="unknown memory category"):
        mem.alloc(1, "activation")                            # a typo is still named


def test_accounting_on_is_the_default():
    assert Device().accounting and Device().memory.enabled


# -- GELU: the derivative written in forward is backward's old arithmetic --------------------
def gelu_step_by_step(x, g):
    """y and dx as the blocked kernel used to compute them, every step on the whole array:
    tanh recomputed in backward, then the derivative, then times g."""
    t = activations._gelu_tanh(x, np.empty_like(x))
    y = t + 1.0
    y *= x
    y *= 0.5
    t = activations._gelu_tanh(x, np.empty_like(x))         # backward: the tanh again
    di = np.multiply(x, x)
    di *= 3 * 0.044715 * activations._GELU_C
    di += activations._GELU_C
    d = np.multiply(t, t)
    np.subtract(1.0, d, out=d)
    d *= x
    d *= di
    t += 1.0
    d += t
    d *= 0.5
    d *= g
    return y, d


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("blocks", [0.3, 2.5])          # one partial block; several and a ragged one
def test_gelu_forward_and_backward_are_bit_identical_to_the_step_by_step_arithmetic(dtype, blocks):
    n = int(blocks * activations.BLOCK_BYTES / np.dtype(dtype).itemsize)
    x, g = randn(n, dtype=dtype) * 3, randn(n, seed=1, dtype=dtype)
    xt = Tensor(x.reshape(-1, 8) if n % 8 == 0 else x, requires_grad=True)
    y = F.gelu(xt)
    y.backward(g.reshape(xt.shape))
    want_y, want_dx = gelu_step_by_step(x, g)
    assert np.array_equal(y.data.ravel(), want_y)
    assert np.array_equal(xt.grad.ravel(), want_dx)
    with no_grad():                                         # no derivative buffer: the same y
        assert np.array_equal(F.gelu(xt).data, y.data)


# -- split: the chunks' gradients written into one buffer -------------------------------------
def chunk_grads_summed(shape, parts, dtype):
    """The old arithmetic: each chunk's gradient as a full-size array of zeros, added up."""
    total = None
    for index, g in parts:
        full = np.zeros(shape, dtype)
        full[index] = g
        total = full if total is None else total + full
    return total


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_split_gradients_equal_the_sum_of_zero_padded_chunks(dtype):
    a = Tensor(randn(2, 3, 12, dtype=dtype), requires_grad=True)
    q, k, v = a.split(4, axis=2)
    gq, gk = randn(2, 3, 4, seed=1, dtype=dtype), randn(2, 3, 4, seed=2, dtype=dtype)
    # q reaches the loss twice, k once, v not at all (its part stays zero)
    loss = (q * Tensor(gq)).sum() + (k * Tensor(gk)).sum() + (q * Tensor(gk)).sum()
    loss.backward()
    want = chunk_grads_summed(a.shape, [(np.s_[:, :, 4:8], gk), (np.s_[:, :, 0:4], gq + gk)], dtype)
    assert np.array_equal(a.grad, want)
    assert np.all(a.grad[:, :, 8:] == 0)


def test_split_chunks_and_the_whole_tensor_together():
    """A chunk's gradient meets a full-size one (the tensor used whole as well): plain add."""
    w = randn(3, 6)
    a = Tensor(w, requires_grad=True)
    left, right = a.split(3, axis=1)
    g_whole, g_left, g_right = randn(3, 6, seed=1), randn(3, 3, seed=2), randn(3, 3, seed=3)
    ((a * Tensor(g_whole)).sum() + (left * Tensor(g_left)).sum() + (right * Tensor(g_right)).sum()).backward()
    chunks = chunk_grads_summed(a.shape, [(np.s_[:, 3:6], g_right), (np.s_[:, 0:3], g_left)], np.float64)
    assert np.array_equal(a.grad, chunks + g_whole) or np.array_equal(a.grad, g_whole + chunks)


def test_split_of_a_parameter_in_the_deferred_weight_pass():
    from minidist.tensor import Parameter
    p = Parameter(randn(4, 6))
    x = Tensor(randn(2, 4, seed=1), requires_grad=True)
    y1, y2 = (x @ p).split(3, axis=1)                       # the product, then its chunks
    a, b = p.split(3, axis=1)                               # the weight itself split too
    out = (y1 * y2).sum() + (x @ a).sum() + (x @ b * 2.0).sum()
    work = out.backward(defer_weight_grad=True)
    assert p.grad is None
    work.run()
    ref = Parameter(p.data.copy())
    xr = Tensor(x.data, requires_grad=True)
    r1, r2 = (xr @ ref).split(3, axis=1)
    ra, rb = ref.split(3, axis=1)
    ((r1 * r2).sum() + (xr @ ra).sum() + (xr @ rb * 2.0).sum()).backward()
    assert np.array_equal(p.grad, ref.grad)
