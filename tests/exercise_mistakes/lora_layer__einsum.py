"""A right answer written with einsum on the folded leading axes; the forward through the merged weight."""
import numpy as np

EXPECT = []


def lora_forward(x, W, b, A, B, alpha):
    r = A.shape[1]
    return np.einsum("...i,io->...o", x, lora_merge(W, A, B, alpha)) + b if r else x @ W + b


def lora_backward(x, W, A, B, alpha, dy):
    s = alpha / A.shape[1]
    X, G = x.reshape(-1, x.shape[-1]), dy.reshape(-1, dy.shape[-1])   # (N, d_in), (N, d_out)
    h = np.einsum("ni,ir->nr", X, A)                               # x·A
    dh = s * np.einsum("no,ro->nr", G, B)                          # gradient at x·A
    dB = s * np.einsum("nr,no->ro", h, G)
    dA = np.einsum("ni,nr->ir", X, dh)
    dx = np.einsum("no,io->ni", G, W) + np.einsum("nr,ir->ni", dh, A)
    return dx.reshape(x.shape), dA, dB


def lora_merge(W, A, B, alpha):
    return W + np.einsum("ir,ro->io", A, B) * (alpha / A.shape[1])
