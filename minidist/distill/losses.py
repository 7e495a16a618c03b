"""The two distillation losses, each a fused op with its backward written beside its forward.

* :func:`kd_loss` — soft-target knowledge distillation (Hinton, Vinyals & Dean 2015,
  "Distilling the Knowledge in a Neural Network"): the student matches the teacher's
  distribution softened by a temperature T, plus the ordinary cross-entropy on the labels.
* :func:`pkd_loss` — Patient knowledge distillation (Sun, Cheng, Gan & Liu 2019, "Patient
  Knowledge Distillation for BERT Model Compression"): the student's intermediate block
  outputs match chosen teacher blocks, after each hidden vector is normalised to unit length.

The teacher is frozen, so its side arrives as plain arrays (logits, or the top-K
:class:`TopK` that a teacher rank sends); only the student's tensors get gradients.
"""
from __future__ import annotations

import dataclasses

import numpy as np

from ..tensor import Tensor, as_tensor, make_result

IGNORE_INDEX = -1       # minidist's data marks positions without a target with -1


# ----------------------------------------------------------------------------- teacher side

def softmax_t(logits: np.ndarray, temperature: float) -> np.ndarray:
    """softmax(z / T) along the last axis, computed stably (max subtracted first)."""
    z = np.asarray(logits) / temperature
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


@dataclasses.dataclass
class TopK:
    """The teacher's K most likely tokens per position and their probabilities at temperature T.

    ``probs`` (..., K) = softmax(z_t / T) at those tokens, ``indices`` (..., K) their ids.
    :meth:`dense` rebuilds a full distribution over the V tokens: the K kept
    probabilities stay where they are and the remaining mass ``1 − Σ probs`` is spread
    **uniformly over the V − K other tokens** (so the rebuilt distribution sums to 1 and
    never puts zero mass on a token the student may predict).
    """

    probs: np.ndarray
    indices: np.ndarray
    vocab_size: int
    temperature: float

    def dense(self) -> np.ndarray:
        k, v = self.probs.shape[-1], self.vocab_size
        rest = np.clip(1.0 - self.probs.sum(axis=-1, keepdims=True), 0.0, None) / max(v - k, 1)
        out = np.broadcast_to(rest, self.probs.shape[:-1] + (v,)).astype(self.probs.dtype)   # (..., V)
        np.put_along_axis(out, self.indices.astype(np.int64), self.probs, axis=-1)
        return out


def top_k(teacher_logits: np.ndarray, k: int, temperature: float) -> TopK:
    """Keep the K largest teacher logits per position (what a teacher rank sends with
    ``top_k``), as probabilities at temperature T. Ties are broken by the lower token id."""
    z = np.asarray(teacher_logits)
    v = z.shape[-1]
    if not 1 <= k < v:
        raise ValueError(f"top_k must be in [1, {v - 1}] for a vocabulary of {v}, got {k}")
    order = np.argsort(-z, axis=-1, kind="stable")[..., :k]                 # (..., K)
    probs = np.take_along_axis(softmax_t(z, temperature), order, axis=-1)   # (..., K)
    return TopK(probs, order, v, float(temperature))


def teacher_probs(teacher, temperature: float, dtype) -> np.ndarray:
    """The teacher's distribution at temperature T: from dense logits or from a :class:`TopK`."""
    if isinstance(teacher, TopK):
        if teacher.temperature != temperature:
            raise ValueError(f"the top-K targets were made at T={teacher.temperature}, not T={temperature}")
        return teacher.dense().astype(dtype, copy=False)
    return softmax_t(np.asarray(teacher, dtype=dtype), temperature)


# ----------------------------------------------------------------------------- KD (Hinton)

def kd_loss(student_logits, teacher_logits, targets, temperature: float = 2.0, alpha: float = 0.5,
            ignore_index: int = IGNORE_INDEX, return_parts: bool = False):
    """α·T²·KL(softmax(z_t/T) ‖ softmax(z_s/T)) + (1−α)·CE(z_s, y) (Hinton et al. 2015).

    ``student_logits`` (B, T, V) Tensor; ``teacher_logits`` (B, T, V) array, or the
    :class:`TopK` a teacher rank sent (the mass outside the K tokens spread uniformly over
    the V − K others, see :class:`TopK`); ``targets`` (B, T) ints, ``ignore_index`` where a
    position has no target. The KL and the CE are each averaged over the target positions.
    Why T²: the KL's gradient is exactly (q_s − p_t)/T per logit (q_s, p_t the student's and
    the teacher's softmax at T), and for large T the difference q_s − p_t is itself O(1/T):
    both distributions approach uniform and, for zero-mean logits, q_s − p_t ≈ (z_s − z_t)/(V·T)
    — so the KL's gradient falls as 1/T², and multiplying by T² keeps the soft part's scale
    comparable to the hard part's as T changes (Hinton et al. 2015 §2).

    α = 0 is plain cross-entropy; T = 1, α = 1 the plain KL. With ``return_parts`` it also
    returns ``{"kl": KL, "ce": CE}`` (floats, before weighting).

    Backward, per target row:  ∂/∂z_s = [α·T·(q_s − p_t) + (1−α)·(softmax(z_s) − onehot(y))] / N.
    """
    if not (temperature > 0 and np.isfinite(temperature)):        # NaN fails both
        raise ValueError(f"temperature must be a finite number > 0, got {temperature}")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    s = as_tensor(student_logits)
    V = s.shape[-1]
    z = s.data.reshape(-1, V)                                       # (N, V)
    y = np.asarray(targets).reshape(-1)                             # (N,)
    if y.shape[0] != z.shape[0]:
        raise ValueError(f"kd_loss: {z.shape[0]} positions of logits but {y.shape[0]} targets")
    p = teacher_probs(teacher_logits, temperature, z.dtype)                  # teacher at T
    if p.shape != s.shape:
        raise ValueError(f"kd_loss: teacher distribution has shape {p.shape}, student logits {s.shape}: "
                         f"teacher and student must share the vocabulary and the positions")
    p = p.reshape(-1, V)                                                     # (N, V)
    valid = y != ignore_index
    rows, yv = np.nonzero(valid)[0], y[valid]
    n = max(len(rows), 1)
    # soft part, at temperature T: KL(p ‖ q) = Σ p (log p − log q)
    zt = z[rows] / temperature
    zt = zt - zt.max(axis=1, keepdims=True)
    log_q = zt - np.log(np.exp(zt).sum(axis=1, keepdims=True))      # (n, V) log softmax(z_s/T)
    pv = p[rows]
    plogp = np.where(pv > 0, pv * np.log(np.where(pv > 0, pv, 1.0)), 0.0)   # 0·log 0 = 0
    kl = float((plogp - pv * log_q).sum()) / n
    # hard part, at T = 1
    z1 = z[rows] - z[rows].max(axis=1, keepdims=True)
    e1 = np.exp(z1)
    sum1 = e1.sum(axis=1, keepdims=True)
    ce = float((np.log(sum1[:, 0]) - z1[np.arange(len(rows)), yv]).sum()) / n
    loss = alpha * temperature ** 2 * kl + (1.0 - alpha) * ce
    # the gradient direction, computed once and saved (one (N, V) array, like fused cross-entropy)
    onehot_minus = e1 / sum1
    onehot_minus[np.arange(len(rows)), yv] -= 1.0
    d = np.zeros_like(z)
    d[rows] = (alpha * temperature * (np.exp(log_q) - pv) + (1.0 - alpha) * onehot_minus) / n

    def backward(g, needs):
        return ((d * g).reshape(s.shape),)
    out = make_result(np.asarray(loss, dtype=z.dtype), (s,), backward, "kd_loss", saved=[d], flops=12 * z.size)
    return (out, {"kl": kl, "ce": ce}) if return_parts else out


# ----------------------------------------------------------------------------- Patient KD (Sun)

MAPPINGS = ("skip", "last")


def pkd_pairs(student_layers: int, teacher_layers: int, mapping: str) -> list[tuple[int, int]]:
    """(student block, teacher block) pairs, 1-based, Sun et al. 2019 §3.2.

    The student's first L_s − 1 blocks are matched (its last is covered by the KD loss):
    PKD-Skip maps block k to teacher block ⌊k·L_t/L_s⌋ (every L_t/L_s-th block), PKD-Last
    to L_t − L_s + k (the teacher's last blocks before its own last)."""
    if mapping not in MAPPINGS:
        raise ValueError(f"PKD mapping {mapping!r} is not known; choose one of {list(MAPPINGS)}")
    if student_layers < 2:
        raise ValueError(f"Patient KD matches the student's first n_layer − 1 blocks; a student of "
                         f"{student_layers} block has none: use n_layer >= 2 or turn patient KD off")
    if teacher_layers < student_layers:
        raise ValueError(f"PKD-{mapping.capitalize()} maps the student's {student_layers - 1} inner blocks onto "
                         f"distinct teacher blocks below the teacher's last, which needs a teacher of at least "
                         f"{student_layers} blocks; the teacher has {teacher_layers}")
    ls, lt = student_layers, teacher_layers
    if mapping == "skip":
        return [(k, k * lt // ls) for k in range(1, ls)]
    return [(k, lt - ls + k) for k in range(1, ls)]


def hidden_distance(student_states, teacher_states, eps: float = 1e-12) -> Tensor:
    """Mean over pairs and positions of ‖h_s/‖h_s‖₂ − h_t/‖h_t‖₂‖₂² (norms over the hidden axis).

    ``student_states``: list of P Tensors (B, T, C); ``teacher_states``: P arrays of the same
    shapes. Backward: with u = h_s/‖h_s‖ and the upstream ∂L/∂u = 2(u − v)/(P·N),
    ∂L/∂h_s = (∂L/∂u − u·⟨u, ∂L/∂u⟩) / ‖h_s‖ (the normalisation's Jacobian (I − u uᵀ)/‖h_s‖)."""
    hs = [as_tensor(h) for h in student_states]
    if len(hs) != len(teacher_states) or not hs:
        raise ValueError(f"hidden_distance needs as many teacher states as student states (>= 1), got "
                         f"{len(hs)} and {len(teacher_states)}")
    P = len(hs)
    N = int(np.prod(hs[0].shape[:-1]))                               # positions B·T
    total, saved, units, diffs, norms = 0.0, [], [], [], []
    for h, t in zip(hs, teacher_states):
        t = np.asarray(t.data if isinstance(t, Tensor) else t, dtype=h.data.dtype)
        if t.shape != h.shape:
            raise ValueError(f"Patient KD: teacher hidden state {t.shape} != student's {h.shape}; student and "
                             f"teacher need the same n_embd (a learned projection is not provided)")
        norm = np.sqrt((h.data * h.data).sum(axis=-1, keepdims=True)) + eps      # (B, T, 1)
        u = h.data / norm                                                        # (B, T, C)
        v = t / (np.sqrt((t * t).sum(axis=-1, keepdims=True)) + eps)
        diff = u - v
        total += float((diff * diff).sum())
        units.append(u), diffs.append(diff), norms.append(norm)
        saved += [u, diff, norm]
    scale = 2.0 / (P * N)

    def backward(g, needs):
        grads = []
        for u, diff, norm, need in zip(units, diffs, norms, needs):
            if not need:
                grads.append(None)
                continue
            gu = diff * (scale * g)
            grads.append((gu - u * (u * gu).sum(axis=-1, keepdims=True)) / norm)
        return tuple(grads)
    flops = sum(10 * h.size for h in hs)
    return make_result(np.asarray(total / (P * N), dtype=hs[0].data.dtype), tuple(hs), backward, "pkd_loss",
                       saved=saved, flops=flops)


def pkd_loss(student_hidden, teacher_hidden, mapping: str = "skip", teacher_layers: int | None = None) -> Tensor:
    """Patient KD loss between the block outputs of ``model(idx, return_hidden=True)``.

    ``student_hidden``: the student's L_s block outputs (Tensors (B, T, C)); ``teacher_hidden``:
    the teacher's L_t block outputs (arrays), or a dict {teacher block (1-based): array}
    holding only the mapped ones (what a teacher rank sends; then give ``teacher_layers`` = L_t).
    ``mapping``: "skip" or "last" (see :func:`pkd_pairs`). Added to the KD loss with weight β."""
    if isinstance(teacher_hidden, dict):
        if teacher_layers is None:
            raise ValueError("pkd_loss: with a dict of teacher states, give teacher_layers (the teacher's n_layer)")
        get = teacher_hidden.__getitem__
    else:
        teacher_layers = len(teacher_hidden)
        get = lambda j: teacher_hidden[j - 1]                                   # noqa: E731
    pairs = pkd_pairs(len(student_hidden), teacher_layers, mapping)
    return hidden_distance([student_hidden[i - 1] for i, _ in pairs], [get(j) for _, j in pairs])
