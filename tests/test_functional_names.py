"""``minidist.functional`` under ``torch.nn.functional``'s names keeps torch's defaults where a
torch user leaves an argument out: attention is not causal, dropout drops half, ``split``
cuts the first axis into chunks of the size given; the one form not built (GELU's exact erf,
torch's default) is refused by name, never silently replaced."""
import numpy as np
import pytest

from minidist import functional as F
from minidist.nn import Dropout
from minidist.tensor import Tensor

RNG = np.random.default_rng(0)


def test_attention_is_not_causal_unless_asked_as_in_torch():
    q, k, v = (Tensor(RNG.normal(size=(1, 2, 5, 3))) for _ in range(3))
    plain = F.scaled_dot_product_attention(q, k, v).data
    assert np.array_equal(plain, F.scaled_dot_product_attention(q, k, v, is_causal=False).data)
    causal = F.scaled_dot_product_attention(q, k, v, is_causal=True).data
    assert not np.allclose(plain[..., :-1, :], causal[..., :-1, :])       # the first positions see less
    np.testing.assert_allclose(plain[..., -1, :], causal[..., -1, :], rtol=1e-12)   # the last sees all


def test_dropout_drops_half_by_default_as_in_torch():
    x = Tensor(np.ones((200, 100)))
    y = F.dropout(x, rng=np.random.default_rng(1)).data
    assert abs(np.mean(y == 0) - 0.5) < 0.02 and set(np.unique(y)) == {0.0, 2.0}
    assert Dropout().p == 0.5
    assert F.dropout(x, training=False) is x


def test_split_cuts_the_first_axis_into_chunks_of_the_given_size():
    x = Tensor(np.arange(30.0).reshape(5, 6))
    parts = F.split(x, 2)
    assert [p.shape for p in parts] == [(2, 6), (2, 6), (1, 6)]           # torch.split(x, 2): sizes, dim 0
    assert [p.shape for p in x.split(4, axis=1)] == [(5, 4), (5, 2)]
    with pytest.raises(ValueError, match="size of each chunk"):
        F.split(x, 0)


def test_gelu_takes_torchs_approximate_and_refuses_the_erf_form_by_name():
    x = Tensor(RNG.normal(size=(4, 3)))
    assert np.array_equal(F.gelu(x).data, F.gelu(x, approximate="tanh").data)
    with pytest.raises(ValueError, match="approximate='tanh'"):
        F.gelu(x, approximate="none")
