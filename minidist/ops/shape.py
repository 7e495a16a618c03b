"""Shape ops: reshape, transpose, indexing/slicing, split, concat. No FLOPs, no saved data."""
from __future__ import annotations

import numpy as np

from ..tensor import SliceGrad, Tensor, as_tensor, make_result


def reshape(a, shape) -> Tensor:
    a = as_tensor(a)
    out = a.data.reshape(shape)
    return make_result(out, (a,), lambda g, needs: (g.reshape(a.shape),), "reshape")


def transpose(a, dim0: int, dim1: int) -> Tensor:
    """Swap two axes (``torch.transpose``)."""
    a = as_tensor(a)
    return make_result(np.swapaxes(a.data, dim0, dim1), (a,),
                       lambda g, needs: (np.swapaxes(g, dim0, dim1),), "transpose")


def getitem(a, idx) -> Tensor:
    """Basic and advanced indexing; the gradient scatters back (adding on repeats)."""
    a = as_tensor(a)
    if isinstance(idx, Tensor):
        idx = idx.data
    out = a.data[idx]

    def backward(g, needs):
        ga = np.zeros_like(a.data)
        np.add.at(ga, idx, g)
        return (ga,)
    return make_result(out, (a,), backward, "getitem")


def split(a, split_size: int, axis: int = 0) -> list[Tensor]:
    """Split into chunks of ``split_size`` along ``axis`` (``torch.split``; the first axis by
    default, as torch's ``dim=0``; the last may be shorter)."""
    if isinstance(split_size, bool) or not isinstance(split_size, (int, np.integer)) or split_size < 1:
        raise ValueError(f"split: split_size is the size of each chunk (torch.split's split_size_or_sections as "
                         f"an int) and must be a positive integer, got {split_size!r}")
    a = as_tensor(a)
    n = a.shape[axis]
    bounds = list(range(0, n, split_size))
    outs = []
    for start in bounds:
        sl = [slice(None)] * a.ndim
        sl[axis] = slice(start, min(start + split_size, n))
        outs.append(_slice(a, tuple(sl)))
    return outs


def _slice(a: Tensor, sl: tuple) -> Tensor:
    def backward(g, needs):
        # zero outside the slice: the engine writes the chunks of one tensor into one buffer
        return (SliceGrad(a.shape, a.data.dtype, sl, g),)
    return make_result(a.data[sl], (a,), backward, "slice")


def concat(tensors, axis: int = -1) -> Tensor:
    tensors = [as_tensor(t) for t in tensors]
    out = np.concatenate([t.data for t in tensors], axis=axis)
    cuts = np.cumsum([t.shape[axis] for t in tensors])[:-1]

    def backward(g, needs):
        return tuple(np.split(g, cuts, axis=axis))
    return make_result(out, tensors, backward, "concat")


cat = concat
