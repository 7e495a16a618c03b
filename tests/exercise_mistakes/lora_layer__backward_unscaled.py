"""The forward is scaled, the weight gradients are not."""
import numpy as np

EXPECT = ["dA", "forgets the scale alpha / r"]


def lora_forward(x, W, b, A, B, alpha):
    return x @ W + b + (alpha / A.shape[1]) * (x @ A) @ B


def lora_backward(x, W, A, B, alpha, dy):
    s = alpha / A.shape[1]
    X, G = x.reshape(-1, x.shape[-1]), dy.reshape(-1, dy.shape[-1])
    return (G @ W.T + s * (G @ B.T) @ A.T).reshape(x.shape), X.T @ (G @ B.T), (X @ A).T @ G


def lora_merge(W, A, B, alpha):
    return W + (alpha / A.shape[1]) * A @ B
