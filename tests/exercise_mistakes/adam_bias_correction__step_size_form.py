"""A right solution written another way: np.multiply/np.add with out= for the moments, the
first correction folded into the step size lr / (1 - beta1**t), param[...] = ... for the
in-place update. Must pass on every shape and dtype."""
import numpy as np

EXPECT = []


def adam_step(param, grad, m, v, t, lr=1e-3, betas=(0.9, 0.999), eps=1e-8):
    beta1, beta2 = betas
    np.multiply(m, beta1, out=m)
    np.add(m, (1 - beta1) * grad, out=m)
    np.multiply(v, beta2, out=v)
    np.add(v, (1 - beta2) * np.square(grad), out=v)
    c1, c2 = 1 - beta1 ** t, 1 - beta2 ** t
    denom = np.sqrt(v / c2) + eps
    param[...] = param - (lr / c1) * m / denom
