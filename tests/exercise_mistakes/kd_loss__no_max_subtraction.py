"""Wrong: a softmax without the max subtraction the statement asks for. Right on small logits;
on rows of logits around ±1000 exp overflows and the loss is NaN."""
import numpy as np

EXPECT = ["numerical stability", "max subtraction"]


def _softmax(z):
    e = np.exp(z)
    return e / e.sum(1, keepdims=True)


def kd_loss(student_logits, teacher_logits, targets, T, alpha):
    n, v = student_logits.shape
    p, q, s = _softmax(teacher_logits / T), _softmax(student_logits / T), _softmax(student_logits)
    kl = np.sum(p * (np.log(p) - np.log(q))) / n
    ce = -np.sum(np.log(s[np.arange(n), targets])) / n
    onehot = np.eye(v)[targets]
    grad = (alpha * T * (q - p) + (1 - alpha) * (s - onehot)) / n
    return alpha * T * T * kl + (1 - alpha) * ce, grad
