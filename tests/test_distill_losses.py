"""kd_loss and pkd_loss against independent float64 formulas and finite differences."""
import numpy as np
import pytest

from minidist import Tensor
from minidist import functional as F
from minidist.distill import TopK, hidden_distance, kd_loss, pkd_loss, pkd_pairs, top_k
from minidist.gradcheck import gradcheck

pytestmark = pytest.mark.distill

B, T, V, C = 2, 3, 7, 5


def _data(seed=0):
    rng = np.random.default_rng(seed)
    zs = rng.standard_normal((B, T, V)) * 2
    zt = rng.standard_normal((B, T, V)) * 2
    y = rng.integers(0, V, size=(B, T))
    y[0, 0] = y[1, 2] = -1                                  # positions without a target
    return zs, zt, y


def _reference(zs, zt, y, temp, alpha):
    """The formula of Hinton et al. written out position by position, in float64."""
    kls, ces = [], []
    for b in range(B):
        for t in range(T):
            if y[b, t] == -1:
                continue
            p = np.exp(zt[b, t] / temp) / np.exp(zt[b, t] / temp).sum()
            q = np.exp(zs[b, t] / temp) / np.exp(zs[b, t] / temp).sum()
            kls.append(sum(p[i] * np.log(p[i] / q[i]) for i in range(V)))
            ces.append(-np.log(np.exp(zs[b, t, y[b, t]]) / np.exp(zs[b, t]).sum()))
    kl, ce = np.mean(kls), np.mean(ces)
    return alpha * temp ** 2 * kl + (1 - alpha) * ce, kl, ce


@pytest.mark.parametrize("temp,alpha", [(1.0, 0.5), (2.0, 0.7), (4.0, 1.0), (0.5, 0.2)])
def test_kd_loss_equals_the_float64_formula_and_finite_differences(temp, alpha):
    zs, zt, y = _data()
    loss, parts = kd_loss(Tensor(zs, requires_grad=True), zt, y, temp, alpha, return_parts=True)
    want, kl, ce = _reference(zs, zt, y, temp, alpha)
    assert float(loss.data) == pytest.approx(want, rel=1e-12)
    assert parts["kl"] == pytest.approx(kl, rel=1e-12) and parts["ce"] == pytest.approx(ce, rel=1e-12)
    s = Tensor(zs.copy(), requires_grad=True)
    assert gradcheck(lambda a: kd_loss(a, zt, y, temp, alpha), [s], rtol=1e-6) < 1e-6
    assert np.all(s.grad[0, 0] == 0) and np.all(s.grad[1, 2] == 0)          # no target, no gradient


def test_alpha_zero_is_cross_entropy_and_t1_alpha1_is_kl():
    zs, zt, y = _data(1)
    a, b = Tensor(zs, requires_grad=True), Tensor(zs, requires_grad=True)
    kd_loss(a, zt, y, temperature=3.0, alpha=0.0).backward()
    F.cross_entropy(b.reshape(B * T, V), y.reshape(-1), ignore_index=-1).backward()
    assert np.allclose(a.grad, b.grad, rtol=1e-12, atol=1e-15)
    assert float(kd_loss(zs, zt, y, 3.0, 0.0).data) == pytest.approx(
        float(F.cross_entropy(zs.reshape(B * T, V), y.reshape(-1), ignore_index=-1).data), rel=1e-12)
    _, kl, _ = _reference(zs, zt, y, 1.0, 1.0)
    assert float(kd_loss(zs, zt, y, temperature=1.0, alpha=1.0).data) == pytest.approx(kl, rel=1e-12)
    assert float(kd_loss(zs, zs, y, 1.0, 1.0).data) == pytest.approx(0.0, abs=1e-12)   # KL(p‖p) = 0


def test_the_t_squared_factor_keeps_the_soft_gradient_scale():
    """Hinton et al. §2: at high T the soft gradient ≈ (z_s − z_t)/(N·V) whatever T, thanks to T²."""
    rng = np.random.default_rng(2)
    zs, zt = rng.standard_normal((1, 4, V)) * 0.1, rng.standard_normal((1, 4, V)) * 0.1
    zs -= zs.mean(-1, keepdims=True)
    zt -= zt.mean(-1, keepdims=True)
    y = np.zeros((1, 4), dtype=np.int64)
    grads = []
    for temp in (20.0, 80.0):
        s = Tensor(zs, requires_grad=True)
        kd_loss(s, zt, y, temp, alpha=1.0).backward()
        grads.append(s.grad)
    approx = (zs - zt) / (4 * V)
    tol = 0.02 * np.abs(approx).max()
    assert np.abs(grads[0] - grads[1]).max() < tol and np.abs(grads[1] - approx).max() < tol


def test_the_kls_own_gradient_is_q_minus_p_over_t_and_falls_as_one_over_t_squared():
    """kd_loss's docstring and notebook 08: the KL's gradient per logit is exactly (q − p)/T, and
    q − p ≈ (z_s − z_t)/(V·T) for large T, so the gradient without the T² factor falls as 1/T²."""
    rng = np.random.default_rng(3)
    zs, zt = rng.standard_normal((1, 4, V)), rng.standard_normal((1, 4, V))
    zs -= zs.mean(-1, keepdims=True)
    zt -= zt.mean(-1, keepdims=True)
    y = np.zeros((1, 4), dtype=np.int64)
    kl_grad = {}
    for temp in (1.0, 2.0, 50.0, 100.0, 200.0):
        s = Tensor(zs, requires_grad=True)
        kd_loss(s, zt, y, temp, alpha=1.0).backward()
        kl_grad[temp] = s.grad / temp ** 2                   # the gradient of the KL alone (α = 1, no T²)
        q = np.exp(zs / temp) / np.exp(zs / temp).sum(-1, keepdims=True)
        p = np.exp(zt / temp) / np.exp(zt / temp).sum(-1, keepdims=True)
        np.testing.assert_allclose(kl_grad[temp], (q - p) / temp / 4, rtol=1e-10, atol=1e-15)   # exact, N = 4
    for temp in (50.0, 100.0, 200.0):                       # q − p ≈ (z_s − z_t)/(V·T): O(1/T)
        q_minus_p = kl_grad[temp] * temp * 4
        np.testing.assert_allclose(q_minus_p, (zs - zt) / (V * temp), atol=0.03 * np.abs(zs - zt).max() / (V * temp))
    for small, large in ((50.0, 100.0), (100.0, 200.0)):    # doubling T divides the KL's gradient by ≈ 4
        ratio = np.abs(kl_grad[small]).sum() / np.abs(kl_grad[large]).sum()
        assert ratio == pytest.approx(4.0, rel=0.02)
    assert np.abs(kl_grad[1.0]).sum() / np.abs(kl_grad[2.0]).sum() != pytest.approx(4.0, rel=0.02)   # only for large T


def test_top_k_spreads_the_rest_uniformly_and_k_equal_v_minus_1_is_exact():
    _, zt, y = _data(3)
    tk = top_k(zt, 3, temperature=2.0)
    assert tk.probs.shape == (B, T, 3) and tk.indices.shape == (B, T, 3)
    dense = tk.dense()
    full = np.exp(zt / 2) / np.exp(zt / 2).sum(-1, keepdims=True)
    assert np.allclose(dense.sum(-1), 1.0)
    kept = np.take_along_axis(full, tk.indices, -1)
    assert np.array_equal(np.take_along_axis(dense, tk.indices, -1), tk.probs) and np.allclose(tk.probs, kept)
    assert np.all(kept.min(-1) >= np.sort(full, -1)[..., -3])            # they are the 3 largest
    rest = (1 - kept.sum(-1)) / (V - 3)
    mask = np.ones_like(dense, bool)
    np.put_along_axis(mask, tk.indices, False, -1)
    assert np.allclose(dense[mask].reshape(B, T, V - 3), rest[..., None])
    # K = V − 1: the one left-out token gets exactly the remaining mass, so KD is unchanged
    zs = np.random.default_rng(4).standard_normal((B, T, V))
    exact = float(kd_loss(zs, zt, y, 2.0, 0.5).data)
    assert float(kd_loss(zs, top_k(zt, V - 1, 2.0), y, 2.0, 0.5).data) == pytest.approx(exact, rel=1e-12)
    with pytest.raises(ValueError, match="top_k must be in"):
        top_k(zt, V, 2.0)
    with pytest.raises(ValueError, match="T=2.0, not T=1"):
        kd_loss(zs, tk, y, 1.0, 0.5)
    assert isinstance(tk, TopK)


def test_kd_loss_rejects_a_teacher_of_another_vocabulary():
    zs, zt, y = _data()
    with pytest.raises(ValueError, match="share the vocabulary"):
        kd_loss(zs, zt[..., :-1], y, 2.0, 0.5)
    for bad in (0.0, -1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match=f"temperature must be a finite number > 0, got {bad}"):
            kd_loss(zs, zt, y, bad, 0.5)


def test_pkd_mappings_follow_sun_et_al():
    assert pkd_pairs(6, 12, "skip") == [(1, 2), (2, 4), (3, 6), (4, 8), (5, 10)]
    assert pkd_pairs(6, 12, "last") == [(1, 7), (2, 8), (3, 9), (4, 10), (5, 11)]
    assert pkd_pairs(3, 12, "skip") == [(1, 4), (2, 8)]
    assert pkd_pairs(2, 2, "last") == [(1, 1)]
    with pytest.raises(ValueError, match="at least 4 blocks; the teacher has 3"):
        pkd_pairs(4, 3, "skip")
    with pytest.raises(ValueError, match="n_layer >= 2"):
        pkd_pairs(1, 4, "last")
    with pytest.raises(ValueError, match="choose one of"):
        pkd_pairs(2, 4, "first")


@pytest.mark.parametrize("mapping", ["skip", "last"])
def test_pkd_loss_equals_the_float64_formula_and_finite_differences(mapping):
    rng = np.random.default_rng(5)
    hs = [rng.standard_normal((B, T, C)) for _ in range(3)]
    ht = [rng.standard_normal((B, T, C)) for _ in range(6)]
    pairs = pkd_pairs(3, 6, mapping)
    want = np.mean([np.sum((hs[i - 1][b, t] / np.linalg.norm(hs[i - 1][b, t])
                            - ht[j - 1][b, t] / np.linalg.norm(ht[j - 1][b, t])) ** 2)
                    for i, j in pairs for b in range(B) for t in range(T)])
    st = [Tensor(h, requires_grad=True) for h in hs]
    assert float(pkd_loss(st, ht, mapping).data) == pytest.approx(want, rel=1e-12)
    # the dict form (only the mapped teacher blocks, as a teacher rank sends them) agrees
    sent = {j: ht[j - 1] for _, j in pairs}
    assert float(pkd_loss(st, sent, mapping, teacher_layers=6).data) == pytest.approx(want, rel=1e-12)
    assert gradcheck(lambda *a: pkd_loss(list(a), ht, mapping), st, rtol=1e-6) < 1e-6
    assert st[2].grad is None or np.all(st[2].grad == 0)                 # the last block is not matched
    # scale invariance: the loss compares directions only
    assert float(pkd_loss([Tensor(3 * h) for h in hs], ht, mapping).data) == pytest.approx(want, rel=1e-10)


def test_hidden_distance_needs_equal_widths():
    with pytest.raises(ValueError, match="same n_embd"):
        hidden_distance([Tensor(np.ones((1, 2, 4)))], [np.ones((1, 2, 8))])
