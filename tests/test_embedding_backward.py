"""The embedding's backward (minidist.ops.embedding.scatter_add_rows) is np.add.at, bit for bit."""
import numpy as np
import pytest

from minidist.ops.embedding import embedding, scatter_add_rows
from minidist.tensor import Tensor


def _add_at(ids, rows, num_rows):
    gw = np.zeros((num_rows, rows.shape[1]), dtype=rows.dtype)
    np.add.at(gw, ids, rows)
    return gw


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
@pytest.mark.parametrize("n, vocab, width, skew", [(1, 5, 3, 1), (7, 3, 2, 1), (1024, 65, 16, 4),
                                                   (500, 1000, 8, 1), (300, 7, 5, 8)])
def test_scatter_add_rows_is_add_at_bit_for_bit(dtype, n, vocab, width, skew):
    rng = np.random.default_rng(n + vocab)
    p = rng.random(vocab) ** skew                      # skewed: a few ids occur hundreds of times
    ids = rng.choice(vocab, n, p=p / p.sum())
    rows = rng.standard_normal((n, width)).astype(dtype) * rng.choice([1e-3, 1.0, 1e3], (n, 1))
    got, want = scatter_add_rows(ids, rows, vocab), _add_at(ids, rows, vocab)
    assert got.dtype == want.dtype and got.tobytes() == want.tobytes()


def test_signed_zeros_and_no_ids():
    ids = np.array([2, 2, 0])
    rows = np.array([[-0.0, 1.0], [-0.0, -1.0], [-0.0, 0.5]])
    assert scatter_add_rows(ids, rows, 3).tobytes() == _add_at(ids, rows, 3).tobytes()
    assert not scatter_add_rows(np.array([], dtype=int), np.zeros((0, 4)), 3).any()


def test_embedding_gradient_through_the_graph():
    ids = np.array([[1, 3, 1], [0, 1, 3]])
    w = Tensor(np.arange(12.0).reshape(4, 3), requires_grad=True)
    g = np.random.default_rng(0).standard_normal((2, 3, 3))
    embedding(ids, w).backward(g)
    assert np.array_equal(w.grad, _add_at(ids.ravel(), g.reshape(-1, 3), 4))
