"""Wrong: the bias corrections count from t - 1, as if t started at 0: step 1 divides by zero
and every parameter becomes NaN. The message must say why, not only show the NaN."""
import numpy as np

EXPECT = ["t - 1", "1 - beta**0 = 0"]


def adam_step(param, grad, m, v, t, lr=1e-3, betas=(0.9, 0.999), eps=1e-8):
    b1, b2 = betas
    m *= b1
    m += (1 - b1) * grad
    v *= b2
    v += (1 - b2) * grad * grad
    with np.errstate(all="ignore"):
        m_hat = m / (1 - b1 ** (t - 1))
        v_hat = v / (1 - b2 ** (t - 1))
        param -= lr * m_hat / (np.sqrt(v_hat) + eps)
