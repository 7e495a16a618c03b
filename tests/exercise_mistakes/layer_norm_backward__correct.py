"""A correct student solution: must pass."""
import numpy as np

EXPECT = []


def layer_norm_backward(grad_out, x, weight, eps=1e-5):
    mean = x.mean(-1, keepdims=True)
    var = ((x - mean) ** 2).mean(-1, keepdims=True)
    rstd = 1 / np.sqrt(var + eps)
    xhat = (x - mean) * rstd
    gh = grad_out * weight
    dx = rstd * (gh - gh.mean(-1, keepdims=True) - xhat * (gh * xhat).mean(-1, keepdims=True))
    c = x.shape[-1]
    return dx, (grad_out * xhat).reshape(-1, c).sum(0), grad_out.reshape(-1, c).sum(0)
