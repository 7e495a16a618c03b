"""A correct student solution: must pass."""
import numpy as np

EXPECT = []


def _softmax(z):
    e = np.exp(z - z.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


def kd_loss(student_logits, teacher_logits, targets, T, alpha):
    n, v = student_logits.shape
    p, q, s = _softmax(teacher_logits / T), _softmax(student_logits / T), _softmax(student_logits)
    kl = np.sum(p * (np.log(p) - np.log(q))) / n
    ce = -np.sum(np.log(s[np.arange(n), targets])) / n
    onehot = np.eye(v)[targets]
    grad = (alpha * T * (q - p) + (1 - alpha) * (s - onehot)) / n
    return alpha * T * T * kl + (1 - alpha) * ce, grad
