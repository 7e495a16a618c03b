"""Differentiable ops. Each file is one family; each op's backward sits beside its forward.

:mod:`.methods` binds them to :class:`~minidist.tensor.Tensor` as operators (``x + y``, ``x.sum()``).
"""
from .activations import dropout, gelu, log_softmax, softmax
from .attention import scaled_dot_product_attention
from .elementwise import add, div, exp, log, mul, neg, pow, sub, tanh
from .embedding import embedding
from .intra_op import num_threads, set_num_threads
from .linalg import linear, linear_input_grad, linear_weight_grad, matmul
from .loss import cross_entropy
from .normalization import layer_norm
from .reduce import max, mean, sum
from .shape import cat, concat, getitem, reshape, split, transpose
from . import methods  # noqa: F401,I001  (attaches x + y, x @ w, x.sum() … to Tensor)

__all__ = ["add", "cat", "concat", "cross_entropy", "div", "dropout", "embedding", "exp", "gelu",
           "getitem", "layer_norm", "linear", "linear_input_grad", "linear_weight_grad", "log",
           "log_softmax", "matmul", "max", "mean", "mul", "neg", "num_threads", "pow", "reshape",
           "scaled_dot_product_attention", "set_num_threads", "softmax", "split", "sub", "sum", "tanh",
           "transpose"]
