"""A right solution written another way: a log_softmax helper of the student's own (hint 2
suggests one; minidist has a function of that name, which this file never imports), the KL
written with exp(log p), the cross-entropy with a gather of log-probabilities, a loop-free
one-hot. Must pass, also on logits around ±1000."""
import numpy as np

EXPECT = []


def log_softmax(z):
    shifted = z - z.max(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


def kd_loss(student_logits, teacher_logits, targets, T, alpha):
    zs = np.asarray(student_logits, dtype=np.float64)
    zt = np.asarray(teacher_logits, dtype=np.float64)
    n = zs.shape[0]
    log_p, log_q, log_s = log_softmax(zt / T), log_softmax(zs / T), log_softmax(zs)
    p, q, s = np.exp(log_p), np.exp(log_q), np.exp(log_s)
    kl = (p * (log_p - log_q)).sum() / n
    ce = -np.take_along_axis(log_s, targets[:, None], axis=1).sum() / n
    onehot = np.zeros_like(s)
    onehot[np.arange(n), targets] = 1.0
    grad = (alpha * T * (q - p) + (1 - alpha) * (s - onehot)) / n
    return float(alpha * T ** 2 * kl + (1 - alpha) * ce), grad
