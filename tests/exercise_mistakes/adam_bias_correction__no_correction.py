"""Forgets the bias corrections."""
import numpy as np

EXPECT = ["bias corrections"]


def adam_step(param, grad, m, v, t, lr=1e-3, betas=(0.9, 0.999), eps=1e-8):
    b1, b2 = betas
    m *= b1
    m += (1 - b1) * grad
    v *= b2
    v += (1 - b2) * grad * grad
    param -= lr * m / (np.sqrt(v) + eps)
