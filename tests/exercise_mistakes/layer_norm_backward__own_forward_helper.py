"""A right solution written another way: a forward helper of the student's own called
layer_norm (the name of minidist's function, which the file never imports), the rows
flattened to (N, C), and dx written with sums instead of means. Must pass."""
import numpy as np

EXPECT = []


def layer_norm(x2, eps):
    mu = x2.sum(1, keepdims=True) / x2.shape[1]
    var = ((x2 - mu) ** 2).sum(1, keepdims=True) / x2.shape[1]
    rstd = 1.0 / np.sqrt(var + eps)
    return (x2 - mu) * rstd, rstd


def layer_norm_backward(grad_out, x, weight, eps=1e-5):
    C = x.shape[-1]
    x2, g2 = x.reshape(-1, C), grad_out.reshape(-1, C)
    xhat, rstd = layer_norm(x2, eps)
    dweight = np.einsum("nc,nc->c", g2, xhat)
    dbias = g2.sum(0)
    gh = g2 * weight
    dx = (C * gh - gh.sum(1, keepdims=True) - xhat * (gh * xhat).sum(1, keepdims=True)) * rstd / C
    return dx.reshape(x.shape), dweight, dbias
