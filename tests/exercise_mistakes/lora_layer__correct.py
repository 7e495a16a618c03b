"""A right answer: the leading axes folded, every gradient a product of the folded matrices."""
import numpy as np

EXPECT = []


def lora_forward(x, W, b, A, B, alpha):
    s = alpha / A.shape[1]
    return x @ W + b + s * (x @ A) @ B


def lora_backward(x, W, A, B, alpha, dy):
    s = alpha / A.shape[1]
    X, G = x.reshape(-1, x.shape[-1]), dy.reshape(-1, dy.shape[-1])
    GB = G @ B.T                                                   # (N, r): the gradient at x·A, before s
    dA = s * X.T @ GB
    dB = s * (X @ A).T @ G
    dx = G @ W.T + s * GB @ A.T
    return dx.reshape(x.shape), dA, dB


def lora_merge(W, A, B, alpha):
    return W + (alpha / A.shape[1]) * A @ B
