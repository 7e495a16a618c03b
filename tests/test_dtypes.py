"""A float64 run stays float64 end to end (torch's promotion rule): a Python or NumPy scalar
takes the tensor's dtype, a 0-d result keeps its input's, a NumPy scalar given to Tensor keeps
its dtype; every op's output has its input's dtype (16-bit inputs are held as float32); a
Tensor is accepted wherever an array is (``__array__``), refused when it requires grad."""
import numpy as np
import pytest

import minidist.functional as F
from minidist.distill.losses import kd_loss
from minidist.tensor import Tensor

pytestmark = pytest.mark.engine

rng = np.random.default_rng(0)
X = rng.normal(size=(2, 3, 4))
W = rng.normal(size=(4, 4))
IDS = np.array([[0, 1, 2], [3, 0, 1]])

OPS = {   # op → a call on a (2, 3, 4) tensor x of the dtype under test
    "add": lambda x: F.add(x, x), "sub": lambda x: F.sub(x, 1.0), "mul": lambda x: F.mul(x, np.float64(0.5)),
    "div": lambda x: F.div(x, 2), "neg": lambda x: F.neg(x), "exp": lambda x: F.exp(x), "log": lambda x: F.log(x * x + 1.0),
    "pow": lambda x: F.pow(x, 2), "tanh": lambda x: F.tanh(x), "gelu": lambda x: F.gelu(x),
    "sum": lambda x: F.sum(x), "sum_axis": lambda x: F.sum(x, axis=1), "mean": lambda x: F.mean(x),
    "max": lambda x: F.max(x, axis=-1), "softmax": lambda x: F.softmax(x, axis=-1),
    "log_softmax": lambda x: F.log_softmax(x, axis=-1), "reshape": lambda x: F.reshape(x, (6, 4)),
    "transpose": lambda x: F.transpose(x, 1, 2), "getitem": lambda x: F.getitem(x, (slice(None), 0)),
    "split": lambda x: F.split(x, 2, axis=2)[0], "concat": lambda x: F.concat([x, x], axis=0),
    "matmul": lambda x: F.matmul(x, x.data.dtype.type(1) * Tensor(W.astype(x.data.dtype))),
    "linear": lambda x: F.linear(x, Tensor(W.astype(x.data.dtype))),
    "layer_norm": lambda x: F.layer_norm(x, Tensor(np.ones(4, x.data.dtype)), Tensor(np.zeros(4, x.data.dtype))),
    "dropout": lambda x: F.dropout(x, 0.5, True, np.random.default_rng(0)),
    "cross_entropy": lambda x: F.cross_entropy(F.reshape(x, (6, 4)), IDS.reshape(-1) % 4),
    "embedding": lambda x: F.embedding(IDS, F.reshape(x, (6, 4))),
    "attention": lambda x: F.scaled_dot_product_attention(F.reshape(x, (2, 1, 3, 4)), F.reshape(x, (2, 1, 3, 4)),
                                                           F.reshape(x, (2, 1, 3, 4)), is_causal=True),
    "0-d times a Python float": lambda x: F.sum(x) * 0.5,
    "Python float minus 0-d": lambda x: 1.0 - F.mean(x),
}


@pytest.mark.parametrize("dtype,want", [(np.float64, np.float64), (np.float32, np.float32),
                                        (np.float16, np.float32)], ids=["float64", "float32", "16-bit"])
@pytest.mark.parametrize("op", list(OPS))
def test_every_op_keeps_its_inputs_dtype(op, dtype, want):
    x = Tensor(X.astype(dtype), requires_grad=True)
    out = OPS[op](x)
    assert out.data.dtype == want, f"{op}: {dtype.__name__} in, {out.data.dtype} out"
    if out.data.size == 1:
        out.backward()
    else:
        out.sum().backward()
    assert x.grad.dtype == want


def test_scalars_take_the_tensors_dtype_and_numpy_scalars_keep_theirs():
    assert Tensor(np.float64(2.0)).dtype == np.float64                # a NumPy scalar keeps float64
    assert Tensor(2.0).dtype == np.float32                            # a Python float defaults to float32
    x32 = Tensor(np.ones(3, np.float32))
    assert (x32 * np.float64(0.5)).dtype == np.float32                # the scalar takes the tensor's
    x64 = Tensor(np.ones(3))
    assert (x64.sum() * 0.5).dtype == (0.5 * x64.mean()).dtype == np.float64
    assert (x32.sum() * Tensor(np.float64(2.0))).dtype == np.float64  # two tensors promote as arrays


def test_a_tensor_is_accepted_wherever_an_array_is_unless_it_requires_grad():
    logits = Tensor(X[:, :, :3], requires_grad=True)
    teacher = Tensor(X[:, :, :3] * 2)                                 # computed without grad
    loss = kd_loss(logits, teacher, IDS % 3, temperature=2.0, alpha=0.5)
    want = kd_loss(logits, teacher.data, IDS % 3, temperature=2.0, alpha=0.5)
    assert float(loss.data) == float(want.data) and loss.dtype == np.float64
    assert np.array_equal(np.asarray(teacher), teacher.data)
    with pytest.raises(RuntimeError, match="requires grad.*detach"):
        np.asarray(logits)
