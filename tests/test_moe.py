"""The MoE MLP (minidist.moe) against a loop-by-loop reference written here: each token through
its experts, one at a time, with the same groups, capacities, slots, drops and losses
(float64, ≤ 1e-12); gradients through the gate weights by central differences; the losses
reach the model's loss; the statistics after a step; bad input refused naming the key."""
import math

import numpy as np
import pytest

from minidist.gradcheck import gradcheck
from minidist.model import GPT, GPTConfig
from minidist.moe import MoEConfig, MoEMLP, moe_layers, route, statistics
from minidist.tensor import Tensor
from minidist.testing import train_steps
from minidist.training.config import ConfigError, load_config

pytestmark = [pytest.mark.moe, pytest.mark.timeout(60)]


# -- the reference: plain Python loops over tokens, choices and experts ------------------------------
def gelu(x):
    return 0.5 * x * (1.0 + np.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x ** 3)))


def reference_group(x, W, experts, moe):
    """x (T, h), W (h, E), experts[e] = (w_fc, b_fc, w_proj, b_proj) → out, aux, z, load, dropped."""
    T, E, k = x.shape[0], W.shape[1], moe.top_k
    C = math.ceil(moe.capacity_factor * T * k / E)
    logits = x @ W
    probs = np.exp(logits - logits.max(axis=1, keepdims=True))
    probs /= probs.sum(axis=1, keepdims=True)
    chosen = [sorted(range(E), key=lambda e: (-probs[t, e], e))[:k] for t in range(T)]   # ties: lower index
    filled, slot, load = [0] * E, {}, [0] * E
    for j in range(k):                          # choice-major: every first choice, then every second…
        for t in range(T):
            e = chosen[t][j]
            load[e] += 1
            slot[t, j] = filled[e]
            filled[e] += 1
    out, dropped = np.zeros_like(x), 0
    for t in range(T):
        total = sum(probs[t, e] for e in chosen[t])
        for j, e in enumerate(chosen[t]):
            if slot[t, j] >= C:
                dropped += 1
                continue
            gate = probs[t, e] if k == 1 else probs[t, e] / total
            w_fc, b_fc, w_proj, b_proj = experts[e]
            out[t] += gate * (gelu(x[t] @ w_fc + b_fc) @ w_proj + b_proj)
    aux = E * sum(load[e] / (T * k) * probs[:, e].mean() for e in range(E))
    lse = np.log(np.exp(logits).sum(axis=1))
    return out, aux, float(np.mean(lse ** 2)), load, dropped


def reference(x, layer: MoEMLP):
    """The whole layer: x (B, S, h) in groups of group_size tokens; the losses' mean over groups."""
    moe = layer.moe
    B, S, h = x.shape
    xt = x.reshape(B * S, h)
    n = moe.group_size or B * S
    W = layer.router.weight.data
    experts = [tuple(getattr(getattr(layer.experts[e], m), a).data for m in ("c_fc", "c_proj")
                     for a in ("weight", "bias")) for e in range(moe.num_experts)]
    experts = [(a, b, c, d) for a, b, c, d in experts]
    outs, losses, loads, drops = [], [], [], []
    for g in range(B * S // n):
        out, aux, z, load, dropped = reference_group(xt[g * n:(g + 1) * n], W, experts, moe)
        outs.append(out)
        losses.append(moe.aux_loss_coef * aux + moe.z_loss_coef * z)
        loads.append(load)
        drops.append(dropped)
    return np.concatenate(outs).reshape(B, S, h), float(np.mean(losses)), loads, drops


def layer_of(moe: MoEConfig, n_embd: int = 8, seed: int = 0) -> MoEMLP:
    cfg = GPTConfig(n_layer=1, n_embd=n_embd, n_head=2, block_size=8, vocab_size=11, moe=moe)
    return GPT(cfg, seed=seed, dtype=np.float64).transformer.h[0].mlp


CASES = {
    "top-1": MoEConfig(num_experts=4, top_k=1, capacity_factor=1.25),
    "top-2": MoEConfig(num_experts=4, top_k=2, capacity_factor=1.25),
    "top-2 drops": MoEConfig(num_experts=4, top_k=2, capacity_factor=0.5),
    "top-1 drops, 2 groups": MoEConfig(num_experts=3, top_k=1, capacity_factor=0.4, group_size=6),
    "top-3 of 5, 3 groups": MoEConfig(num_experts=5, top_k=3, capacity_factor=0.8, group_size=4,
                                      aux_loss_coef=0.1, z_loss_coef=0.01),
}


@pytest.mark.parametrize("name", list(CASES))
def test_the_moe_mlp_is_the_loop_by_loop_reference(name):
    layer = layer_of(CASES[name])
    x = np.random.default_rng(1).standard_normal((3, 4, 8)) * 3.0     # large: the router's choices spread out
    out = layer(Tensor(x))
    want, loss, loads, drops = reference(x, layer)
    np.testing.assert_allclose(out.data, want, rtol=0, atol=1e-12 * np.abs(want).max())
    assert abs(float(layer.loss.data) - loss) <= 1e-12 * abs(loss)
    assert [s["load"].tolist() for s in layer.stats] == loads
    assert [s["dropped"] for s in layer.stats] == drops
    if "drops" in name:
        assert sum(drops) > 0                                          # the case really drops


def test_routing_ties_go_to_the_lower_expert_and_second_choices_queue_after_every_first():
    probs = np.array([[0.4, 0.4, 0.2], [0.1, 0.3, 0.6], [0.5, 0.25, 0.25]])
    r = route(probs, 2, capacity_factor=0.5)                 # C = ⌈0.5 · 3 · 2 / 3⌉ = 1
    assert r.expert.tolist() == [[0, 1], [2, 1], [0, 1]]
    # first choices in token order: 0→e0 (slot 0), 1→e2 (0), 2→e0 (1); then 0→e1 (0), 1→e1 (1), 2→e1 (2)
    assert r.slot.tolist() == [[0, 0], [0, 1], [1, 2]]
    assert r.kept.tolist() == [[True, True], [True, False], [False, False]]
    assert r.load.tolist() == [2, 3, 1] and r.dropped == 3 and r.capacity == 1


@pytest.mark.parametrize("top_k", [1, 2])
def test_gradients_through_the_gates_router_and_experts_by_central_differences(top_k):
    layer = layer_of(MoEConfig(num_experts=3, top_k=top_k, capacity_factor=0.7, aux_loss_coef=0.3,
                               z_loss_coef=0.2), n_embd=4)
    x = Tensor(np.random.default_rng(2).standard_normal((2, 3, 4)), requires_grad=True)
    w = layer.router.weight
    fc = layer.experts[1].c_fc.weight

    def f(x, w, fc):
        out = layer(x)
        return out.sum(axis=-1) + layer.loss            # the output and the two losses
    assert gradcheck(f, [x, w, fc], eps=1e-6, rtol=1e-6) < 1e-6


def test_the_model_loss_is_the_language_model_loss_plus_every_moe_layers_losses():
    moe = MoEConfig(num_experts=4, top_k=2, every_n_layers=2, aux_loss_coef=0.5, z_loss_coef=0.25)
    cfg = GPTConfig(n_layer=3, n_embd=8, n_head=2, block_size=8, vocab_size=11, moe=moe)
    dense = GPTConfig(n_layer=3, n_embd=8, n_head=2, block_size=8, vocab_size=11)
    model = GPT(cfg, dtype=np.float64)
    assert sorted(moe_layers(model)) == [0, 2]                    # i % every_n_layers == 0
    assert type(model.transformer.h[1].mlp).__name__ == "MLP"
    assert GPT(dense).transformer.h[0].mlp.__class__.__name__ == "MLP"
    idx = np.random.default_rng(3).integers(0, 11, (2, 8))
    logits, loss = model(idx, idx)
    p = np.exp(logits.data - logits.data.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    lm = -np.mean(np.log(np.take_along_axis(p, idx[..., None], -1)))
    extra = sum(float(m.loss.data) for m in moe_layers(model).values())
    assert extra > 0 and abs(float(loss.data) - (lm + extra)) < 1e-12
    loss.backward()
    assert np.abs(model.transformer.h[0].mlp.router.weight.grad).max() > 0


def test_a_training_step_records_load_per_expert_and_dropped_assignments():
    cfg = {"model": {"n_layer": 2, "n_embd": 8, "n_head": 2, "block_size": 8,
                     "moe": {"num_experts": 4, "top_k": 2, "capacity_factor": 0.5}},
           "data": {"dataset": "english", "seq_len": 8}, "steps": 2, "train_micro_batch_size_per_gpu": 2,
           "gradient_accumulation_steps": 2, "dtype": "float64"}
    run = train_steps(cfg)
    for h in run["history"]:
        for layer in (0, 1):
            s = h["moe"][layer]
            assert sum(s["load"]) == 2 * 2 * 8 * 2                 # micro-steps × tokens × k, before capacity
            assert s["dropped"] >= sum(s["load"]) - 2 * 4 * 8      # at most C = 8 per expert per micro-step kept
    assert statistics(run["trainer"].model)[0]["load"].sum() == 2 * 8 * 2


@pytest.mark.parametrize("moe,extra,key", [
    ({"num_experts": 2, "top_k": 3}, {}, "model.moe.top_k"),
    ({"capacity_factor": 0}, {}, "model.moe.capacity_factor"),
    ({"capacity_factor": -1.0}, {}, "model.moe.capacity_factor"),
    ({"num_experts": 3}, {"parallel": {"expert": 2}}, "parallel.expert"),
    ({"num_experts": 4}, {"parallel": {"expert": 4}}, "parallel.expert"),     # 4 does not divide dp = 2
    (None, {"parallel": {"expert": 2}}, "parallel.expert"),                   # no experts to split
    ({"group_size": 5}, {}, "model.moe.group_size"),
    ({"top_kk": 1}, {}, "model.moe.top_kk"),
])
def test_bad_moe_input_is_refused_naming_the_key(moe, extra, key):
    cfg = {"model": {"moe": moe}, "data": {"dataset": "english", "seq_len": 8}, "train_micro_batch_size_per_gpu": 2,
           **extra}
    with pytest.raises(ConfigError) as e:
        load_config(cfg, world_size=2)
    assert e.value.key == key, str(e.value)


@pytest.mark.parametrize("sampling", [dict(temperature=0), dict(temperature=1.0, top_k=5, seed=3)])
def test_generation_drops_no_token_so_the_kv_cache_does_not_change_the_text(sampling):
    """A decode step routes a group of B tokens, the uncached forward the B·T of its window:
    with a capacity they drop different tokens (shown first), so generation routes without
    drops (moe.dropless) and gives the same tokens with and without the cache."""
    from minidist.model import KVCache
    from minidist.moe import dropless
    from minidist.tensor import no_grad
    cfg = GPTConfig(block_size=16, vocab_size=11, n_layer=2, n_head=2, n_embd=16,
                    moe={"num_experts": 2, "top_k": 1, "capacity_factor": 1.0})
    model = GPT(cfg, seed=1, dtype=np.float64)
    for p in model.parameters():
        p.data[...] *= 30                       # confident, unbalanced routing: experts overflow
    model.eval()
    idx = np.random.default_rng(0).integers(0, 11, (1, 9))

    def last_logits_cached_and_whole():
        with no_grad():
            whole, _ = model(idx)
            cache = KVCache()
            model(idx[:, :8], kv_cache=cache)
            step, _ = model(idx[:, 8:], kv_cache=cache)
        return step.data[:, -1], whole.data[:, -1], statistics(model)

    cached, whole, _ = last_logits_cached_and_whole()
    assert np.abs(cached - whole).max() > 1.0           # with capacity: the cache changes the logits
    with dropless(model):
        cached, whole, stats = last_logits_cached_and_whole()
    np.testing.assert_allclose(cached, whole, rtol=1e-10, atol=1e-10)
    assert all(s["dropped"] == 0 for s in stats.values())
    assert all(layer.drop_tokens for layer in moe_layers(model).values())      # restored

    a = model.generate(idx[:, :3], 12, use_cache=True, **sampling)
    b = model.generate(idx[:, :3], 12, use_cache=False, **sampling)
    np.testing.assert_array_equal(a, b)
    assert all(layer.drop_tokens for layer in moe_layers(model).values())


def test_generation_ignores_group_size_and_routes_every_token_as_without_groups():
    """Training groups ``group_size`` tokens; a decode step has B tokens, which need not be a
    multiple of it (it raised). Without capacity the groups change only the balance losses,
    which decoding does not use, so generation routes one group: the same tokens with and
    without the cache, and as the same model without ``group_size``."""
    from minidist.model import KVCache
    from minidist.moe import dropless
    from minidist.tensor import no_grad
    moe = {"num_experts": 4, "top_k": 2, "group_size": 7}
    grouped = GPT(GPTConfig(block_size=16, vocab_size=11, n_layer=2, n_head=2, n_embd=16, moe=moe), seed=1,
                  dtype=np.float64)
    plain = GPT(GPTConfig(block_size=16, vocab_size=11, n_layer=2, n_head=2, n_embd=16,
                          moe={k: v for k, v in moe.items() if k != "group_size"}), seed=1, dtype=np.float64)
    idx = np.random.default_rng(0).integers(0, 11, (3, 5))
    a = grouped.generate(idx, 6, temperature=0.0)
    np.testing.assert_array_equal(a, plain.generate(idx, 6, temperature=0.0))
    np.testing.assert_array_equal(a, grouped.generate(idx, 6, temperature=0.0, use_cache=False))
    with no_grad(), dropless(grouped):
        grouped(idx[:, :4], kv_cache=KVCache())                    # 12 tokens: not a multiple of 7
    with pytest.raises(ValueError, match="group_size 7 does not divide"):
        grouped(idx[:, :4])                                        # training's routing still checks
