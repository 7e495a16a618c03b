"""minidist: an educational simulator of distributed Transformer training in pure NumPy."""
from ._malloc import tune_malloc
from . import ops  # noqa: F401  (gives Tensor its operators: x + y, x @ w, x.sum())
from .tensor import Parameter, Tensor, is_grad_enabled, no_grad

tune_malloc()

__version__ = "0.1.0"
__all__ = ["Parameter", "Tensor", "is_grad_enabled", "no_grad"]
