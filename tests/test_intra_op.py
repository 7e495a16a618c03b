"""Intra-op threads (minidist.ops.intra_op): pieces cover the work once, errors come back, and
an op split over threads gives the very bits of the one-thread op — attention (causal and not,
with a KV cache, a ragged last block, dropout) and GELU, and a whole GPT training step."""
import subprocess
import sys
import threading
import warnings

import numpy as np
import pytest

import minidist
from minidist import functional as F
from minidist.ops import intra_op
from minidist.ops.blas_threads import blas_threads
from minidist.tensor import Tensor


pytestmark = pytest.mark.timeout(120)

@pytest.fixture
def threads(monkeypatch):
    """Set the intra-op count alone (OpenBLAS's count untouched: its own splits change GEMM bits)."""
    def set_to(n):
        monkeypatch.setitem(intra_op._STATE, "threads", n)
    yield set_to


@pytest.mark.parametrize("n,parts", [(10, 3), (3, 3), (7, 2), (1, 1), (0, 2)])
def test_pieces_cover_the_range_once_in_order(n, parts):
    cut = intra_op.pieces(n, parts)
    assert len(cut) == parts
    assert [i for a, b in cut for i in range(a, b)] == list(range(n))
    sizes = [b - a for a, b in cut]
    assert max(sizes) - min(sizes) <= 1


def test_parallel_for_runs_the_pieces_on_separate_threads(threads):
    threads(3)
    seen, lock = {}, threading.Lock()

    def body(a, b, piece):
        with lock:
            seen[piece] = (a, b, threading.get_ident())
    intra_op.parallel_for(10, body)
    assert sorted(seen) == [0, 1, 2]
    assert [seen[k][:2] for k in range(3)] == [(0, 4), (4, 7), (7, 10)]
    assert seen[0][2] == threading.get_ident()                 # piece 0 on the calling thread
    assert threading.get_ident() not in {seen[1][2], seen[2][2]}   # the others on the pool's


def test_one_thread_and_nested_calls_run_the_whole_loop_in_place(threads):
    calls = []
    threads(1)
    intra_op.parallel_for(5, lambda a, b, k: calls.append((a, b, k, threading.get_ident())))
    assert calls == [(0, 5, 0, threading.get_ident())]
    threads(2)
    inner = []

    def outer(a, b, k):
        intra_op.parallel_for(4, lambda c, d, j: inner.append((k, c, d, j)))
    intra_op.parallel_for(2, outer)
    assert sorted(inner) == [(0, 0, 4, 0), (1, 0, 4, 0)]        # no splitting inside a piece


def test_an_error_in_a_worker_piece_is_raised_by_the_call(threads):
    threads(2)
    done = []

    def body(a, b, k):
        if k == 1:
            raise ArithmeticError("piece 1 failed")
        done.append(k)
    with pytest.raises(ArithmeticError, match="piece 1 failed"):
        intra_op.parallel_for(2, body)
    assert done == [0]                                          # the calling thread's piece still ran


@pytest.mark.parametrize("bad", [0, -1, 1.5, True, "2"])
def test_set_num_threads_refuses_what_is_not_a_count(bad):
    with pytest.raises(ValueError, match="whole number of threads >= 1"):
        minidist.set_num_threads(bad)


@pytest.mark.skipif(blas_threads() is None, reason="OpenBLAS not found next to NumPy")
def test_set_num_threads_sets_the_ops_and_blas_counts(monkeypatch):
    monkeypatch.setitem(intra_op._STATE, "threads", intra_op.num_threads())
    before = blas_threads()
    try:
        minidist.set_num_threads(3)
        assert minidist.num_threads() == 3 and blas_threads() == 3
        minidist.set_num_threads(1)
        assert minidist.num_threads() == 1 and blas_threads() == 1
    finally:
        intra_op._library()[1](before)


def test_a_bad_environment_count_is_refused_with_its_name():
    code = "import minidist; minidist.num_threads()"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env={"MINIDIST_NUM_THREADS": "two", "PATH": ""}, timeout=60)
    assert proc.returncode != 0 and "MINIDIST_NUM_THREADS='two'" in proc.stderr
    ok = subprocess.run([sys.executable, "-c", "import minidist; print(minidist.num_threads())"],
                        capture_output=True, text=True, env={"MINIDIST_NUM_THREADS": "3", "PATH": ""}, timeout=60)
    assert ok.stdout.strip() == "3"


def test_the_environment_count_sets_blas_threads_as_set_num_threads_does():
    """README: ``MINIDIST_NUM_THREADS=n`` does what ``set_num_threads(n)`` does, BLAS included
    (it only split the elementwise ops: OpenBLAS kept its own count)."""
    code = ("import minidist; from minidist.ops.blas_threads import blas_threads; "
            "minidist.num_threads(); print(blas_threads())")
    for n in ("3", "1"):
        env = {"MINIDIST_NUM_THREADS": n, "OPENBLAS_NUM_THREADS": "2", "PATH": ""}
        ok = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60)
        assert ok.stdout.strip() in (n, "None"), ok.stderr             # None: NumPy's BLAS is not OpenBLAS


def _attention(q, k, v, causal, dropout, seed):
    qt, kt, vt = (Tensor(a.copy(), requires_grad=True) for a in (q, k, v))
    y = F.scaled_dot_product_attention(qt, kt, vt, is_causal=causal, dropout_p=dropout,
                                       rng=np.random.default_rng(seed))
    g = np.random.default_rng(seed + 1).standard_normal(y.shape).astype(y.dtype)
    y.backward(g)
    return [y.data, qt.grad, kt.grad, vt.grad]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("B,T,Tk,causal,dropout", [
    (8, 128, 128, True, 0.0),     # the reference model's shape: several passes, two blocks
    (5, 130, 130, True, 0.0),     # a ragged last block of 2 queries (the heads-first layout)
    (3, 16, 40, True, 0.0),       # a KV cache: 24 positions cached before these 16
    (4, 32, 32, False, 0.0),      # not causal: one block
    (6, 96, 96, True, 0.2),       # attention dropout
])
def test_attention_split_over_threads_gives_the_same_bits(threads, dtype, B, T, Tk, causal, dropout):
    rng = np.random.default_rng(0)
    q = rng.standard_normal((B, 4, T, 16)).astype(dtype)
    k, v = (rng.standard_normal((B, 4, Tk, 16)).astype(dtype) for _ in range(2))
    threads(1)
    one = _attention(q, k, v, causal, dropout, seed=3)
    for n in (2, 3):
        threads(n)
        for a, b in zip(one, _attention(q, k, v, causal, dropout, seed=3)):
            np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("contiguous_grad", [True, False])
def test_gelu_split_over_threads_gives_the_same_bits(threads, dtype, contiguous_grad):
    x0 = np.random.default_rng(1).standard_normal((8, 128, 1024)).astype(dtype)
    g = np.random.default_rng(2).standard_normal((8, 1024, 128)).astype(dtype)
    g = np.ascontiguousarray(g.transpose(0, 2, 1)) if contiguous_grad else g.transpose(0, 2, 1)
    out = {}
    for n in (1, 2, 3):
        threads(n)
        x = Tensor(x0.copy(), requires_grad=True)
        y = F.gelu(x)
        y.backward(g)
        out[n] = (y.data, x.grad)
    for n in (2, 3):
        for a, b in zip(out[1], out[n]):
            np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_a_training_step_is_bit_identical_on_one_two_and_three_threads(threads, dtype):
    from minidist.model import GPT, GPTConfig
    from minidist.optim import AdamW

    def train(n):
        threads(n)
        model = GPT(GPTConfig(n_layer=2, n_embd=64, n_head=4, block_size=130, vocab_size=65), seed=0)
        for p in model.parameters():
            p.data = p.data.astype(dtype)
        opt = AdamW(model.parameters(), lr=1e-3)
        rng = np.random.default_rng(0)
        x, y = rng.integers(0, 65, (6, 130)), rng.integers(0, 65, (6, 130))
        losses = []
        for _ in range(2):
            _, loss = model(x, y)
            loss.backward()
            opt.step()
            opt.zero_grad()
            losses.append(float(loss.data))
        return losses, [p.data for p in model.parameters()]
    base = train(1)
    for n in (2, 3):
        other = train(n)
        assert other[0] == base[0]
        for a, b in zip(base[1], other[1]):
            np.testing.assert_array_equal(a, b)


@pytest.mark.skipif(not hasattr(__import__("os"), "fork"), reason="fork is POSIX")
def test_a_forked_child_starts_its_own_pool(threads):
    import os
    threads(2)
    intra_op.parallel_for(2, lambda a, b, k: None)              # the parent's pool is running
    with warnings.catch_warnings():                              # 3.12+: fork in a threaded process
        warnings.simplefilter("ignore", DeprecationWarning)
        pid = os.fork()
    if pid == 0:                                                 # the child: the parent's threads are gone
        code = 1
        try:
            seen = []
            intra_op.parallel_for(2, lambda a, b, k: seen.append(k))
            code = 0 if sorted(seen) == [0, 1] else 2
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0
