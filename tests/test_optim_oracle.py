"""The optimizers' first steps against the update rules written out from the papers.

These oracles share no code with :mod:`minidist.optim`: each rule is a plain loop in float64
over a few steps with fixed gradients, written from the paper (and PyTorch's documented
conventions for the hyper-parameter names). tests/test_torch_reference.py also checks
SGD, Adam and AdamW against ``torch.optim`` through a committed PyTorch dump.

* SGD with momentum / dampening / Nesterov / L2 weight decay: PyTorch's ``torch.optim.SGD``
  (Sutskever et al. 2013's momentum; the buffer starts as the first gradient).
* Adam: Kingma & Ba 2015, Algorithm 1, with both bias corrections; ``weight_decay`` is L2
  added to the gradient (as ``torch.optim.Adam``).
* AdamW: Loshchilov & Hutter 2019, decoupled decay, PyTorch's form θ ← θ(1 − lr·λ) − lr·m̂/(√v̂+ε).
* LAMB: You et al. 2020, Algorithm 2, the variant minidist implements: bias-corrected Adam
  direction r = m̂/(√v̂+ε), decay added after it (u = r + λθ), per-tensor trust ratio
  φ(‖θ‖)/‖u‖ with φ the identity and no clipping, a ratio of 1 when either norm is zero,
  and no global gradient-norm pre-normalisation (which NVIDIA's FusedLAMB adds).
"""
import numpy as np
import pytest

from minidist import optim
from minidist.tensor import Parameter

pytestmark = pytest.mark.engine

SHAPE = (3, 5)


def start_and_grads(steps=3, seed=0):
    """θ0 and ``steps`` gradients of mixed magnitudes, with an exactly-zero gradient element."""
    rng = np.random.default_rng(seed)
    theta = rng.standard_normal(SHAPE)
    grads = [rng.standard_normal(SHAPE) * 10.0 ** rng.integers(-4, 2, SHAPE) for _ in range(steps)]
    for g in grads:
        g[0, 0] = 0.0
    return theta, grads


# -- the oracles ---------------------------------------------------------------------------
def sgd_oracle(theta, grads, lr, momentum=0.0, dampening=0.0, weight_decay=0.0, nesterov=False):
    out, buf = [], None
    for t, grad in enumerate(grads, start=1):
        g = grad + weight_decay * theta
        if momentum:
            buf = g if t == 1 else momentum * buf + (1 - dampening) * g
            d = g + momentum * buf if nesterov else buf
        else:
            d = g
        theta = theta - lr * d
        out.append(theta)
    return out


def adam_oracle(theta, grads, lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, decoupled=False):
    """Kingma & Ba 2015 Algorithm 1 (L2 decay in the gradient), or AdamW when ``decoupled``."""
    b1, b2 = betas
    m = v = np.zeros_like(theta)
    out = []
    for t, grad in enumerate(grads, start=1):
        g = grad if decoupled else grad + weight_decay * theta
        m = b1 * m + (1 - b1) * g                      # biased first moment
        v = b2 * v + (1 - b2) * g ** 2                 # biased second raw moment
        m_hat = m / (1 - b1 ** t)                      # bias corrections
        v_hat = v / (1 - b2 ** t)
        if decoupled:
            theta = theta * (1 - lr * weight_decay)
        theta = theta - lr * m_hat / (np.sqrt(v_hat) + eps)
        out.append((theta, m, v))
    return out


def lamb_oracle(theta, grads, lr, betas=(0.9, 0.999), eps=1e-6, weight_decay=0.0):
    """You et al. 2020 Algorithm 2 for one tensor (one layer), φ(z) = z."""
    b1, b2 = betas
    m = v = np.zeros_like(theta)
    out = []
    for t, g in enumerate(grads, start=1):
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g ** 2
        r = (m / (1 - b1 ** t)) / (np.sqrt(v / (1 - b2 ** t)) + eps)
        u = r + weight_decay * theta
        w_norm, u_norm = np.sqrt((theta ** 2).sum()), np.sqrt((u ** 2).sum())
        trust = w_norm / u_norm if w_norm > 0 and u_norm > 0 else 1.0
        theta = theta - lr * trust * u
        out.append(theta)
    return out


def run(opt_cls, theta, grads, **hyper):
    """minidist's optimizer through its public ``step()``; the parameter after each step."""
    p = Parameter(theta.copy())
    opt = opt_cls([p], **hyper)
    out = []
    for g in grads:
        p.grad = g.copy()
        opt.step()
        out.append(p.data.copy())
    return out, opt, p


def assert_steps_equal(got, want, what):
    for t, (a, b) in enumerate(zip(got, want), start=1):
        np.testing.assert_allclose(a, b, rtol=1e-13, atol=1e-15, err_msg=f"{what}, step {t}")


# -- SGD -------------------------------------------------------------------------------------
@pytest.mark.parametrize("hyper", [{}, {"momentum": 0.9}, {"momentum": 0.9, "dampening": 0.3},
                                   {"momentum": 0.9, "nesterov": True},
                                   {"momentum": 0.8, "weight_decay": 0.1},
                                   {"momentum": 0.9, "nesterov": True, "weight_decay": 0.05}])
def test_sgd_first_steps(hyper):
    theta, grads = start_and_grads()
    got, _, _ = run(optim.SGD, theta, grads, lr=0.1, **hyper)
    assert_steps_equal(got, sgd_oracle(theta, grads, 0.1, **hyper), f"SGD {hyper}")


def test_sgd_momentum_closed_form():
    """Without decay the momentum sum unrolls: θ3 = θ0 − lr·(g1(1+μ+μ²) + g2(1+μ) + g3)."""
    theta, (g1, g2, g3) = start_and_grads()
    mu, lr = 0.9, 0.1
    got, _, _ = run(optim.SGD, theta, [g1, g2, g3], lr=lr, momentum=mu)
    np.testing.assert_allclose(got[-1], theta - lr * (g1 * (1 + mu + mu * mu) + g2 * (1 + mu) + g3),
                               rtol=1e-13, atol=1e-15)


# -- Adam / AdamW ----------------------------------------------------------------------------
ADAMS = [(optim.Adam, {}), (optim.Adam, {"weight_decay": 0.1}), (optim.Adam, {"betas": (0.8, 0.99), "eps": 1e-6}),
         (optim.AdamW, {}), (optim.AdamW, {"weight_decay": 0.3, "betas": (0.5, 0.9)})]


@pytest.mark.parametrize("path", ["update", "_update_reference"])      # the blocked and the whole-array paths
@pytest.mark.parametrize("cls,hyper", ADAMS)
def test_adam_first_steps(cls, hyper, path):
    theta, grads = start_and_grads()
    lr = 1e-2
    p = Parameter(theta.copy())
    opt = cls([p], lr=lr, **hyper)
    group = opt.param_groups[0]
    expect = adam_oracle(theta, grads, lr, group["betas"], group["eps"], group["weight_decay"],
                         decoupled=cls is optim.AdamW)
    for t, (g, (theta_t, m_t, v_t)) in enumerate(zip(grads, expect), start=1):
        getattr(opt, path)(p.data, g.copy(), opt.state_for(p), group)
        np.testing.assert_allclose(p.data, theta_t, rtol=1e-13, atol=1e-15, err_msg=f"{cls.__name__} {path} step {t}")
        st = opt.state[id(p)]
        assert st["step"] == t
        np.testing.assert_allclose(st["exp_avg"], m_t, rtol=1e-13, atol=1e-300)
        np.testing.assert_allclose(st["exp_avg_sq"], v_t, rtol=1e-13, atol=1e-300)


@pytest.mark.parametrize("path", ["update", "_update_reference"])
def test_adam_first_step_is_lr_times_sign(path):
    """With both bias corrections, step 1 is θ0 − lr·g/(|g| + ε): about lr·sign(g) for every
    element whatever its size (Kingma & Ba §2: |Δ| ≲ α). Dropping a correction breaks it by
    a factor 1 − β1 = 0.1 (first moment) or √(1 − β2) ≈ 0.03 (second)."""
    theta, grads = start_and_grads()
    p = Parameter(theta.copy())
    opt = optim.Adam([p], lr=1e-2)
    getattr(opt, path)(p.data, grads[0], opt.state_for(p), opt.param_groups[0])
    g = grads[0]
    np.testing.assert_allclose(p.data, theta - 1e-2 * g / (np.abs(g) + 1e-8), rtol=1e-14, atol=1e-16)
    moved = np.abs(p.data - theta)[g != 0]
    assert np.all(moved > 0.9e-2) and np.all(moved <= 1e-2)


def test_adamw_decay_is_decoupled_from_the_moments():
    """AdamW's decay never enters m and v (Loshchilov & Hutter 2019, Algorithm 2, line 12);
    with zero gradients θ only shrinks geometrically: θ_t = θ0·(1 − lr·λ)^t."""
    theta = np.random.default_rng(3).standard_normal(SHAPE)
    got, opt, p = run(optim.AdamW, theta, [np.zeros(SHAPE)] * 3, lr=0.1, weight_decay=0.5)
    for t, theta_t in enumerate(got, start=1):
        np.testing.assert_allclose(theta_t, theta * 0.95 ** t, rtol=1e-14)
    assert not opt.state[id(p)]["exp_avg"].any() and not opt.state[id(p)]["exp_avg_sq"].any()


@pytest.mark.parametrize("cls", [optim.Adam, optim.AdamW])
def test_adam_float32_follows_the_float64_rule(cls):
    theta, grads = start_and_grads()
    theta32 = theta.astype(np.float32)
    grads32 = [g.astype(np.float32) for g in grads]
    got, _, _ = run(cls, theta32, grads32, lr=1e-2)
    want = adam_oracle(theta32.astype(np.float64), [g.astype(np.float64) for g in grads32], 1e-2,
                       weight_decay=cls.defaults["weight_decay"], decoupled=cls is optim.AdamW)
    for a, (b, _, _) in zip(got, want):
        assert a.dtype == np.float32
        # a handful of float32 roundings per step on values of size ~1: a few ulp of θ
        np.testing.assert_allclose(a, b, rtol=0, atol=8 * np.finfo(np.float32).eps * np.abs(theta).max())


# -- LAMB ------------------------------------------------------------------------------------
@pytest.mark.parametrize("hyper", [{}, {"weight_decay": 0.01}, {"weight_decay": 0.1, "betas": (0.8, 0.9)}])
def test_lamb_first_steps(hyper):
    theta, grads = start_and_grads()
    got, opt, _ = run(optim.LAMB, theta, grads, lr=1e-2, **hyper)
    group = opt.param_groups[0]
    want = lamb_oracle(theta, grads, 1e-2, group["betas"], group["eps"], group["weight_decay"])
    assert_steps_equal(got, want, f"LAMB {hyper}")


def test_lamb_first_step_moves_each_tensor_by_lr_times_its_norm():
    """Step 1 without decay: the trust ratio makes ‖Δθ‖ = lr·‖θ‖ for every tensor, whatever
    the scale of its gradient (You et al. 2020 §3: layer-wise adaptivity)."""
    rng = np.random.default_rng(5)
    params = [Parameter(rng.standard_normal(s) * scale) for s, scale in [((4, 6), 1.0), ((7,), 30.0)]]
    before = [p.data.copy() for p in params]
    opt = optim.LAMB(params, lr=1e-2)
    for p, g_scale in zip(params, (1e-3, 1e2)):
        p.grad = rng.standard_normal(p.shape) * g_scale
    opt.step()
    for p, b in zip(params, before):
        np.testing.assert_allclose(np.linalg.norm(p.data - b), 1e-2 * np.linalg.norm(b), rtol=1e-12)


def test_lamb_zero_weights_use_a_trust_ratio_of_one():
    got, _, _ = run(optim.LAMB, np.zeros(SHAPE), start_and_grads()[1][:1], lr=1e-2)
    g = start_and_grads()[1][0]
    np.testing.assert_allclose(got[0], -1e-2 * g / (np.abs(g) + 1e-6), rtol=1e-13, atol=1e-300)


def test_lamb_is_not_shardable_and_adam_is():
    """LAMB needs whole-tensor norms, so ZeRO cannot apply it to a flat shard."""
    assert not optim.LAMB.shardable and optim.Adam.shardable and optim.SGD.shardable


@pytest.mark.parametrize("min_coeff,max_coeff,scale,want_trust", [(0.01, 10.0, 100.0, 10.0),   # ‖θ‖/‖u‖ = 100
                                                                  (0.01, 10.0, 1e-4, 0.01),    # 1e-4: clipped up
                                                                  (0.01, 10.0, 1.0, 1.0)])     # inside: untouched
def test_lamb_clips_the_trust_ratio_as_deepspeeds_fused_lamb(min_coeff, max_coeff, scale, want_trust):
    """DeepSpeed's FusedLamb (``"type": "Lamb"``) clips ‖θ‖/‖u‖ to [min_coeff, max_coeff]:
    θ = scale·1 and a ±1 gradient give u = ±1 at step 1 (eps aside), ratio = scale."""
    p = Parameter(np.full(4, scale))
    opt = optim.LAMB([p], lr=1e-2, eps=1e-12, min_coeff=min_coeff, max_coeff=max_coeff)
    p.grad = np.array([1.0, -1.0, 1.0, -1.0])
    opt.step()
    np.testing.assert_allclose(p.data, scale - 1e-2 * want_trust * np.sign([1.0, -1.0, 1.0, -1.0]), rtol=1e-9,
                               atol=1e-9 * scale)
    plain = Parameter(np.full(4, 100.0))                   # the paper's φ = identity by default: ratio 100
    default = optim.LAMB([plain], lr=1e-2, eps=1e-12)
    plain.grad = np.array([1.0, -1.0, 1.0, -1.0])
    default.step()
    np.testing.assert_allclose(plain.data, 100.0 - np.sign([1.0, -1.0, 1.0, -1.0]), rtol=1e-9)
    with pytest.raises(ValueError, match="min_coeff <= max_coeff"):
        optim.LAMB([p], min_coeff=2.0, max_coeff=1.0)


@pytest.mark.parametrize("params,decoupled", [({"weight_decay": 0.5}, True),                # DeepSpeed's default
                                              ({"weight_decay": 0.5, "adam_w_mode": False}, False),
                                              ({"weight_decay": 0.5, "torch_adam": True}, True),
                                              ({"weight_decay": 0.0}, False)])
def test_a_deepspeed_adam_section_decays_as_deepspeed_does(params, decoupled):
    """DeepSpeed runs ``"type": "Adam"`` as AdamW (decoupled decay) unless ``adam_w_mode`` is
    false, then torch.optim.Adam's L2 (runtime/engine.py, ``_configure_basic_optimizer``). Step
    1 from θ = 1 with g = ±1e-3, lr 0.1, wd 0.5: decoupled θ·(1 − 0.05) ∓ 0.1, L2 the sign of
    g + 0.5θ (+) everywhere: θ − 0.1."""
    from minidist.training.config import load_config
    cfg = load_config({"optimizer": {"type": "Adam", "params": {"lr": 0.1, **params}}})
    p = Parameter(np.ones(3))
    opt = optim.build("Adam", [p], deepspeed=True, **cfg["optimizer"]["params"])     # as the trainer builds it
    p.grad = np.array([1e-3, 0.0, -1e-3])
    opt.step()
    wd = params["weight_decay"]
    want = (1 - 0.1 * wd) - 0.1 * np.sign(p.grad) if decoupled else \
        1 - 0.1 * np.sign(p.grad + wd * 1.0) * (np.abs(p.grad + wd) > 0)
    np.testing.assert_allclose(p.data, want, rtol=0, atol=1e-5)          # eps 1e-8 beside |g| = 1e-3
    assert opt.decoupled == (decoupled and wd > 0)
    torch_like = optim.build("Adam", [Parameter(np.ones(3))], lr=0.1, weight_decay=wd)   # torch.optim's meaning
    assert not torch_like.decoupled


def test_deepspeed_keys_other_optimizers_lack_are_refused_by_name():
    from minidist.training.config import ConfigError, load_config
    with pytest.raises(ConfigError, match="'optimizer.params.bias_correction'.*Adam has no hyper-parameter"):
        load_config({"optimizer": {"type": "Adam", "params": {"bias_correction": False}}})
    with pytest.raises(ConfigError, match="'optimizer.params.adam_w_mode'.*SGD has no"):
        load_config({"optimizer": {"type": "SGD", "params": {"adam_w_mode": True}}})
    with pytest.raises(ConfigError, match="expected true or false"):
        load_config({"optimizer": {"type": "AdamW", "params": {"torch_adam": 1}}})
    with pytest.raises(ConfigError, match="min_coeff <= max_coeff"):
        load_config({"optimizer": {"type": "Lamb", "params": {"min_coeff": 3.0, "max_coeff": 2.0}}})


# -- bad input --------------------------------------------------------------------------------
def test_bad_hyper_parameters_are_named():
    p = [Parameter(np.zeros(2))]
    with pytest.raises(TypeError, match="momentun"):
        optim.SGD(p, momentun=0.9)
    with pytest.raises(ValueError, match="lr must be >= 0"):
        optim.Adam(p, lr=-1)
    with pytest.raises(ValueError, match="betas"):
        optim.AdamW(p, betas=(0.9, 1.0))
    with pytest.raises(ValueError, match="AdamW"):
        optim.build("adamax", p)


def test_torch_style_parameter_groups_are_refused_by_name():
    """torch.optim takes a list of dicts (parameter groups); minidist's optimizers hold one
    group, and say so instead of failing at step() on a dict without ``grad``."""
    a, b = Parameter(np.zeros(2)), Parameter(np.zeros(3))
    with pytest.raises(TypeError, match="parameter groups .* not supported"):
        optim.AdamW([{"params": [a], "weight_decay": 0.0}, {"params": [b]}])
