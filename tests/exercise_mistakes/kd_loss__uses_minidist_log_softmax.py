"""Wrong: borrows minidist's engine for the log-softmax: the rules refuse it, whatever the
values."""
import numpy as np

from minidist import functional as F
from minidist.tensor import Tensor

EXPECT = ["imports `minidist.functional`", "imports `minidist.tensor`"]


def kd_loss(student_logits, teacher_logits, targets, T, alpha):
    def log_sm(z):
        return F.log_softmax(Tensor(z), axis=-1).data

    n, v = student_logits.shape
    log_p, log_q, log_s = log_sm(teacher_logits / T), log_sm(student_logits / T), log_sm(student_logits)
    p, q, s = np.exp(log_p), np.exp(log_q), np.exp(log_s)
    kl = np.sum(p * (log_p - log_q)) / n
    ce = -np.sum(log_s[np.arange(n), targets]) / n
    grad = (alpha * T * (q - p) + (1 - alpha) * (s - np.eye(v)[targets])) / n
    return alpha * T * T * kl + (1 - alpha) * ce, grad
