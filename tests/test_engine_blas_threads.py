"""``one_blas_thread`` (minidist/ops/blas_threads.py): OpenBLAS on one thread inside, the
count put back when the last thread that entered leaves, nested and from several threads;
attention's numbers are the same on one BLAS thread or two."""
import threading

import numpy as np
import pytest

import minidist.functional as F
from minidist.ops import blas_threads
from minidist.tensor import Tensor

pytestmark = pytest.mark.engine
needs_openblas = pytest.mark.skipif(blas_threads.blas_threads() is None, reason="OpenBLAS not found next to NumPy")


@pytest.fixture
def two_threads():
    before = blas_threads.blas_threads()
    blas_threads._library()[1](2)
    yield
    blas_threads._library()[1](before)


@needs_openblas
def test_one_thread_inside_and_the_count_restored(two_threads):
    with blas_threads.one_blas_thread():
        assert blas_threads.blas_threads() == 1
        with blas_threads.one_blas_thread():
            assert blas_threads.blas_threads() == 1
        assert blas_threads.blas_threads() == 1
    assert blas_threads.blas_threads() == 2


@needs_openblas
def test_several_threads_restore_once_the_last_leaves(two_threads):
    inside, leave = threading.Barrier(3), threading.Event()
    seen = []

    def rank():
        with blas_threads.one_blas_thread():
            inside.wait(timeout=10)
            seen.append(blas_threads.blas_threads())
            leave.wait(timeout=10)
    threads = [threading.Thread(target=rank) for _ in range(2)]
    for t in threads:
        t.start()
    inside.wait(timeout=10)
    assert blas_threads.blas_threads() == 1
    leave.set()
    for t in threads:
        t.join(timeout=10)
    assert seen == [1, 1] and blas_threads.blas_threads() == 2


@needs_openblas
def test_attention_is_the_same_on_one_blas_thread_or_two(two_threads, monkeypatch):
    rng = np.random.default_rng(0)
    q, k, v = (rng.standard_normal((2, 2, 80, 16)).astype(np.float32) for _ in range(3))
    g = rng.standard_normal(q.shape).astype(np.float32)
    out = []
    for wrap in (True, False):
        if not wrap:           # the products on two BLAS threads
            monkeypatch.setattr(blas_threads, "_library", lambda: None)
        ts = [Tensor(a, requires_grad=True) for a in (q, k, v)]
        y = F.scaled_dot_product_attention(*ts, is_causal=True)
        y.backward(g)
        out.append([y.data] + [t.grad for t in ts])
    for a, b in zip(*out):
        assert np.array_equal(a, b)
