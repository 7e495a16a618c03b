"""Forward and backward right; the merge forgets the scale."""
import numpy as np

EXPECT = ["merged W", "without its scale alpha / r"]


def lora_forward(x, W, b, A, B, alpha):
    return x @ W + b + (alpha / A.shape[1]) * (x @ A) @ B


def lora_backward(x, W, A, B, alpha, dy):
    s = alpha / A.shape[1]
    X, G = x.reshape(-1, x.shape[-1]), dy.reshape(-1, dy.shape[-1])
    return (G @ W.T + s * (G @ B.T) @ A.T).reshape(x.shape), s * X.T @ (G @ B.T), s * (X @ A).T @ G


def lora_merge(W, A, B, alpha):
    return W + A @ B
