"""Lets the gradient reach x through the frozen W only."""
import numpy as np

EXPECT = ["flows through W only"]


def lora_forward(x, W, b, A, B, alpha):
    return x @ W + b + (alpha / A.shape[1]) * (x @ A) @ B


def lora_backward(x, W, A, B, alpha, dy):
    s = alpha / A.shape[1]
    X, G = x.reshape(-1, x.shape[-1]), dy.reshape(-1, dy.shape[-1])
    return dy @ W.T, s * X.T @ (G @ B.T), s * (X @ A).T @ G


def lora_merge(W, A, B, alpha):
    return W + (alpha / A.shape[1]) * A @ B
