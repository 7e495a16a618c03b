"""Wrong: the parameter gradients sum over axis=(0, 1), right for the (B, T, C) inputs of a
GPT only. The statement promises x of 1 to 4 axes; a 1-D or 4-D input shows it."""
import numpy as np

EXPECT = ["1 to 4 axes", "not axis=(0, 1)"]


def layer_norm_backward(grad_out, x, weight, eps=1e-5):
    mean = x.mean(-1, keepdims=True)
    var = x.var(-1, keepdims=True)
    rstd = 1 / np.sqrt(var + eps)
    xhat = (x - mean) * rstd
    gh = grad_out * weight
    dx = rstd * (gh - gh.mean(-1, keepdims=True) - xhat * (gh * xhat).mean(-1, keepdims=True))
    return dx, (grad_out * xhat).sum(axis=(0, 1)), grad_out.sum(axis=(0, 1))
