"""Scales the update by alpha instead of alpha / r."""
import numpy as np

EXPECT = ["scaled by alpha; LoRA scales it by alpha / r"]


def lora_forward(x, W, b, A, B, alpha):
    return x @ W + b + alpha * (x @ A) @ B


def lora_backward(x, W, A, B, alpha, dy):
    X, G = x.reshape(-1, x.shape[-1]), dy.reshape(-1, dy.shape[-1])
    return (G @ W.T + alpha * (G @ B.T) @ A.T).reshape(x.shape), alpha * X.T @ (G @ B.T), alpha * (X @ A).T @ G


def lora_merge(W, A, B, alpha):
    return W + alpha * A @ B
