"""Uses the unbiased variance (ddof=1)."""
import numpy as np

EXPECT = ["unbiased"]


def layer_norm_backward(grad_out, x, weight, eps=1e-5):
    c = x.shape[-1]
    mean = x.mean(-1, keepdims=True)
    var = x.var(-1, keepdims=True, ddof=1)
    rstd = 1 / np.sqrt(var + eps)
    xhat = (x - mean) * rstd
    gh = grad_out * weight
    dx = rstd * (gh - gh.mean(-1, keepdims=True) - xhat * (gh * xhat).mean(-1, keepdims=True))
    return dx, (grad_out * xhat).reshape(-1, c).sum(0), grad_out.reshape(-1, c).sum(0)
