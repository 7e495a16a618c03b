"""Sums dweight and dbias over the first axis only (works for 2-D input, not 3-D)."""
import numpy as np

EXPECT = ["EVERY axis but the last"]


def layer_norm_backward(grad_out, x, weight, eps=1e-5):
    mean = x.mean(-1, keepdims=True)
    var = ((x - mean) ** 2).mean(-1, keepdims=True)
    rstd = 1 / np.sqrt(var + eps)
    xhat = (x - mean) * rstd
    gh = grad_out * weight
    dx = rstd * (gh - gh.mean(-1, keepdims=True) - xhat * (gh * xhat).mean(-1, keepdims=True))
    return dx, (grad_out * xhat).sum(0), grad_out.sum(0)
