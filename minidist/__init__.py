"""minidist: an educational simulator of distributed Transformer training in pure NumPy."""
from . import ops  # noqa: F401  (gives Tensor its operators: x + y, x @ w, x.sum())
from .ops.intra_op import num_threads, set_num_threads
from .tensor import Parameter, Tensor, is_grad_enabled, no_grad

__version__ = "0.1.0"
__all__ = ["Parameter", "Tensor", "is_grad_enabled", "no_grad", "num_threads", "set_num_threads"]
