"""Parameter-efficient fine-tuning (minidist.peft): every method's trainable parameters,
gradient and optimizer bytes, FLOPs, activation bytes and bytes per step equal the closed
forms of minidist.peft.costs; frozen parameters never change, never get a gradient or an
optimizer state; LoRA merged equals unmerged; every method under ZeRO-2 on 2 ranks equals
one rank; the CLI fine-tunes from a checkpoint's weights."""
import copy
import json

import numpy as np
import pytest

from minidist import distributed as dist
from minidist.model import GPT, GPTConfig
from minidist.peft import costs as C
from minidist.peft import drop_reparameterization, get_peft_model, lora_layers, merge_and_unload
from minidist.peft.trainer import PeftTrainer
from minidist.report import formulas
from minidist.tensor import no_grad
from minidist.training.config import ConfigError, load_config
from minidist.training.trainer import Trainer

pytestmark = [pytest.mark.peft, pytest.mark.timeout(120)]

BASE = {"model": {"n_layer": 2, "n_embd": 16, "n_head": 4, "block_size": 12, "dropout": 0.1},
        "data": {"dataset": "english", "seq_len": 8}, "dtype": "float64", "steps": 2, "eval_iters": 1,
        "train_micro_batch_size_per_gpu": 4, "optimizer": {"type": "AdamW", "params": {"lr": 1e-2}}}
METHODS = {
    "lora": {"peft_type": "LORA", "r": 2, "lora_alpha": 4, "lora_dropout": 0.1, "target_modules": ["c_attn", "c_proj"]},
    "lora-mlp": {"peft_type": "LORA", "r": 3, "target_modules": ["c_fc", "mlp.c_proj"]},
    "adapter": {"peft_type": "ADAPTER", "bottleneck_size": 4},
    "p-tuning-v2": {"peft_type": "PREFIX_TUNING", "num_virtual_tokens": 3},
    "prefix-tuning": {"peft_type": "PREFIX_TUNING", "num_virtual_tokens": 3, "prefix_projection": True,
                      "encoder_hidden_size": 8},
    "qlora": {"peft_type": "LORA", "r": 2, "target_modules": ["c_attn", "c_fc"], "load_in_4bit": True},
}
VOCAB = 75                                   # the English corpus's characters


def config(method, **extra):
    cfg = copy.deepcopy(BASE)
    cfg["peft"] = copy.deepcopy(METHODS[method]) if method else None
    cfg.update(copy.deepcopy(extra))
    return cfg


def shape(cfg):
    return {**cfg["model"], "vocab_size": VOCAB, "bias": True}


@pytest.mark.parametrize("method", list(METHODS) + [None], ids=list(METHODS) + ["full"])
def test_trainable_parameters_gradient_and_optimizer_bytes_equal_the_formulas(method):
    cfg = config(method)
    t = PeftTrainer(cfg)
    peft = t.cfg["peft"]
    n = C.trainable_parameters(shape(cfg), peft)
    assert t.counts["trainable"] == n == sum(p.size for p in t.optimizer.param_groups[0]["params"])
    assert all(p.adapter for p in t.model.parameters() if p.requires_grad) or method is None
    t.train_step(0)
    w, K = 8, 16                                                # float64: 8 bytes, Adam's m and v
    ms = t.strategy.model_states
    assert (ms["gradients"], ms["optimizer_states"]) == (w * n, K * n)
    frozen = t.counts["frozen"]
    if method == "qlora":                                       # every block linear in NF4, the rest float64
        shapes = [a * b for a, b in C.block_linear_shapes(16)] * 2
        frozen_bytes = sum(C.nf4_bytes(k) for k in shapes) + w * (frozen - sum(shapes))
    else:
        frozen_bytes = w * frozen
    assert ms["parameters"] == w * n + frozen_bytes


def _frozen_run(comm, cfg):
    t = PeftTrainer(copy.deepcopy(cfg), comm)
    frozen = {n: p.data.copy() for n, p in t.model.named_parameters() if not p.requires_grad}
    bucketed = {id(p) for b in getattr(t.strategy, "buckets", []) for p in b.params}
    grads_seen = set()
    for step in range(2):
        for p in t.model.parameters():
            p.register_post_accumulate_grad_hook(lambda q: grads_seen.add(id(q)))
        t.train_step(step)
    after = {n: p.data for n, p in t.model.named_parameters() if not p.requires_grad}
    ids = {id(p) for p in t.model.parameters() if not p.requires_grad}
    return {"unchanged": all(np.array_equal(frozen[n], after[n]) for n in frozen), "n_frozen": len(frozen),
            "grads": bool(ids & grads_seen), "state": bool(ids & set(t.optimizer.state)),
            "bucketed": bool(ids & bucketed)}


@pytest.mark.parametrize("method", list(METHODS), ids=list(METHODS))
def test_frozen_parameters_never_change_nor_get_gradients_state_or_buckets(method):
    for r in [_frozen_run(None, config(method))] + dist.spawn(_frozen_run, 2, config(method, **{
            "train_micro_batch_size_per_gpu": 2, "zero_optimization": {"stage": 1}})):
        assert r == {"unchanged": True, "n_frozen": r["n_frozen"], "grads": False, "state": False,
                     "bucketed": False} and r["n_frozen"] > 0


def _steps(comm, cfg):
    t = PeftTrainer(copy.deepcopy(cfg), comm)
    out = []
    for step in range(cfg["steps"]):
        t.train_step(step)
        out.append(t.full_parameters())
    return out, [h["loss"] for h in t.history]


@pytest.mark.parametrize("method", list(METHODS), ids=list(METHODS))
def test_every_method_under_zero2_on_two_ranks_equals_one_rank(method):
    ref, ref_loss = _steps(None, config(method))
    runs = dist.spawn(_steps, 2, config(method, train_micro_batch_size_per_gpu=2, zero_optimization={"stage": 2}))
    np.testing.assert_allclose(np.mean([r[1] for r in runs], axis=0), ref_loss, rtol=1e-12)
    for params, _ in runs:
        for step, want in enumerate(ref):
            assert set(params[step]) == set(want)
            for k in want:
                np.testing.assert_allclose(params[step][k], want[k], rtol=1e-9, atol=1e-12, err_msg=f"{step} {k}")
    assert ref_loss[0] != ref_loss[1]


def _traffic(comm, cfg):
    t = PeftTrainer(copy.deepcopy(cfg), comm)
    t.train_step(0)
    s = t.strategy
    if s.stage == 3:
        units, frozen = [b.numel for b in s.buckets], [f.numel for f in s.frozen_buckets if f is not None]
    else:
        units, frozen = [s.numel], []
    gathers = t.step_log.bytes_sent("all_gather")
    report = formulas(t)                       # the report's formula row: Ψ the trainable part, frozen as parameters
    close = abs(report["bytes_sent_per_step"] - t.history[0]["bytes_sent"]) <= 0.01 * t.history[0]["bytes_sent"] and \
        abs(report["model_states"]["parameters"] - s.model_states["parameters"]) <= 0.01 * s.model_states["parameters"]
    return t.history[0]["bytes_sent"], units, frozen, s.name, gathers, close


@pytest.mark.parametrize("stage", [0, 1, 2, 3])
@pytest.mark.parametrize("method", ["lora", "p-tuning-v2", "prefix-tuning"])
def test_bytes_per_step_equal_the_formula_and_zero3_gathers_the_frozen_shards(method, stage):
    cfg = config(method, train_micro_batch_size_per_gpu=2, gradient_accumulation_steps=2,
                 zero_optimization={"stage": stage})
    for sent, units, frozen, name, gathers, report_close in dist.spawn(_traffic, 2, cfg):
        assert sent == C.bytes_per_step(name, 2, units, frozen, 8, micro_batches=2) > 0 and report_close
        trainable = sum(units)
        assert trainable == C.trainable_parameters(shape(cfg), load_config(cfg)["peft"])
        if stage == 3:          # the frozen shards travel in the all-gathers, 2 per micro-step: measured
            shard = sum((n + 1) // 2 for n in units + frozen)           # ⌈n/p⌉ per unit, p = 2
            assert frozen and gathers == 2 * 2 * (2 - 1) * shard * 8


def test_lora_merged_equals_unmerged_in_float64():
    model = GPT(GPTConfig(block_size=12, vocab_size=VOCAB, n_layer=2, n_head=4, n_embd=16), dtype=np.float64)
    idx = np.random.default_rng(0).integers(0, VOCAB, (3, 12))
    with no_grad():
        base = model(idx)[0].data
    get_peft_model(model, METHODS["lora"])
    with no_grad():
        assert np.array_equal(model.eval()(idx)[0].data, base)          # B = 0: the pretrained model, exactly
    rng = np.random.default_rng(1)
    for layer in lora_layers(model):
        layer.lora_B.data[...] = rng.normal(0.0, 0.5, layer.lora_B.shape)
    weights = [layer.base_layer.weight.data.copy() for layer in lora_layers(model)]
    with no_grad():
        unmerged = model(idx)[0].data
        for layer in lora_layers(model):
            layer.merge()
        merged = model(idx)[0].data
        for layer, w in zip(lora_layers(model), weights):
            layer.unmerge()
            np.testing.assert_allclose(layer.base_layer.weight.data, w, rtol=0, atol=1e-15)
        again = model(idx)[0].data
        plain = merge_and_unload(model)(idx)[0].data
    assert np.max(np.abs(merged - unmerged)) <= 1e-12 and np.max(np.abs(plain - unmerged)) <= 1e-12
    assert np.max(np.abs(again - unmerged)) <= 1e-12 and np.max(np.abs(unmerged - base)) > 1e-3
    assert not lora_layers(model) and not any(p.adapter for p in model.parameters())


def test_lora_backward_is_the_closed_form():
    """dA = s·xᵀ(dy·Bᵀ), dB = s·(x·A)ᵀdy, dx through W and the low-rank path (dropout off)."""
    from minidist.nn import Linear
    from minidist.peft.lora import LoRALinear
    from minidist.nn import Dropout
    from minidist.tensor import Tensor
    rng = np.random.default_rng(2)
    layer = LoRALinear(Linear.from_arrays(rng.normal(size=(5, 7)), rng.normal(size=7)), 3, 6.0, Dropout(0.0), rng)
    layer.base_layer.weight.requires_grad = layer.base_layer.bias.requires_grad = False
    layer.lora_B.data[...] = rng.normal(size=(3, 7))
    x = Tensor(rng.normal(size=(2, 4, 5)), requires_grad=True)
    dy = rng.normal(size=(2, 4, 7))
    layer(x).backward(dy)
    s, A, B, W = 2.0, layer.lora_A.data, layer.lora_B.data, layer.base_layer.weight.data
    xs, ds = x.data.reshape(-1, 5), dy.reshape(-1, 7)
    np.testing.assert_allclose(layer.lora_B.grad, s * (xs @ A).T @ ds, rtol=1e-12)
    np.testing.assert_allclose(layer.lora_A.grad, s * xs.T @ (ds @ B.T), rtol=1e-12)
    np.testing.assert_allclose(x.grad, dy @ (W + s * A @ B).T, rtol=1e-12)
    assert layer.base_layer.weight.grad is None


@pytest.mark.parametrize("method", list(METHODS) + [None], ids=list(METHODS) + ["full"])
def test_forward_and_weight_gradient_flops_equal_the_formulas(method):
    t = PeftTrainer(config(method))
    dev = t.device
    x, y = t.batch(0, 0)
    B, T = x.shape
    before, m0 = dict(dev.flops_by_op), dev.matmul_flops
    with dev:
        loss = t.model(x, y)[1]
        forward = dev.matmul_flops - m0
        loss.backward()
    dw = sum(v - before.get(k, 0) for k, v in dev.flops_by_op.items() if k.endswith((".dW", ".db")))
    peft = t.cfg["peft"]
    assert forward == C.forward_matmul_flops(shape(t.cfg), peft, B, T)
    assert dw == C.weight_gradient_flops(shape(t.cfg), peft, B, T)


def _activations(p):
    cfg = config("p-tuning-v2", model={**BASE["model"], "dropout": 0.0})
    cfg["peft"]["num_virtual_tokens"] = p
    t = PeftTrainer(cfg)
    x, y = t.batch(0, 0)
    with t.device:
        t.model(x, y)
        return t.device.memory.current["activations"], x.shape


def test_prefixes_lengthen_attention_by_the_formula():
    (a1, (B, T)), (a2, _) = _activations(2), _activations(5)
    m = BASE["model"]
    assert a2 - a1 == C.prefix_activation_bytes(m["n_layer"], m["n_embd"], m["n_head"], B, T, 5, 8) - \
        C.prefix_activation_bytes(m["n_layer"], m["n_embd"], m["n_head"], B, T, 2, 8) > 0


def test_prefix_tuning_drops_its_reparameterisation_and_keeps_the_function():
    model = GPT(GPTConfig(block_size=12, vocab_size=VOCAB, n_layer=2, n_head=4, n_embd=16), dtype=np.float64)
    get_peft_model(model, METHODS["prefix-tuning"])
    trained = sum(p.size for p in model.parameters() if p.requires_grad)
    assert trained == C.prefix_encoder_parameters(2, 16, 3, 8)
    idx = np.random.default_rng(0).integers(0, VOCAB, (2, 9))
    with no_grad():
        before = model.eval()(idx)[0].data
        drop_reparameterization(model)
        after = model(idx)[0].data
    assert sum(p.size for p in model.parameters() if p.adapter) == C.prefix_parameters(2, 16, 3) == 2 * 2 * 3 * 16
    assert np.max(np.abs(before - after)) <= 1e-12 and "prefix_encoder" not in dict(model.named_parameters())


@pytest.mark.parametrize("method", ["lora", "adapter", "prefix-tuning"])
def test_generation_with_and_without_the_kv_cache_agree(method):
    model = GPT(GPTConfig(block_size=12, vocab_size=VOCAB, n_layer=2, n_head=4, n_embd=16), dtype=np.float64)
    get_peft_model(model, METHODS[method])
    for p in model.parameters():
        if p.adapter:
            p.data += np.random.default_rng(3).normal(0, 0.3, p.shape)
    prompt = np.array([[1, 2, 3]])
    assert np.array_equal(model.generate(prompt, 6, temperature=0), model.generate(prompt, 6, temperature=0,
                                                                                 use_cache=False))


def test_qlora_stores_nf4_and_pages_its_optimizer_states_to_the_host():
    cfg = config("qlora", dtype="float32")
    cfg["peft"]["paged_optimizer"] = True
    t = PeftTrainer(cfg)
    t.train_step(0)
    ms, n = t.strategy.model_states, t.counts["trainable"]
    assert (ms["optimizer_states"], ms["host"]) == (0, 8 * n) and ms["gradients"] == 4 * n
    copies = [e for e in t.device.trace.events if e.get("name", "").startswith(("page in", "page out"))]
    assert sum(e["args"]["bytes"] for e in copies) == 2 * 8 * n
    assert C.nf4_bytes(16 * 48) == 384 + 12 + 4 + 4                       # n/2 codes, an FP8 per 64, c2, mean


@pytest.mark.parametrize("peft,key,words", [
    ({"peft_type": "P_TUNING"}, "peft.peft_type", "PREFIX_TUNING with prefix_projection false"),
    ({"peft_type": "LORA", "bottleneck_size": 4}, "peft.bottleneck_size", "applies to peft_type ADAPTER"),
    ({"peft_type": "LORA", "target_modules": ["wte"]}, "peft.target_modules", "no linear layer"),
    ({"peft_type": "LORA", "load_in_4bit": True}, "peft.load_in_4bit", "ZeRO-3"),
    ({"peft_type": "LORA", "paged_optimizer": True}, "peft.paged_optimizer", "offload_optimizer"),
    ({"peft_type": "PREFIX_TUNING", "prefix_projection": True}, "peft.prefix_projection", "full recomputation"),
], ids=["p-tuning-v1", "key-of-another-method", "target", "qlora-zero3", "paged-zero", "projection-recompute"])
def test_the_peft_section_refuses_what_it_does_not_build(peft, key, words):
    cfg = config(None, peft=peft, zero_optimization={"stage": 3}, activation_checkpointing={"granularity": "full"})
    with pytest.raises(ConfigError) as e:
        load_config(cfg, 2)
    assert e.value.key == key and words in str(e.value)
    with pytest.raises(ConfigError, match="PeftTrainer"):
        Trainer(config("lora"))


def test_the_cli_fine_tunes_from_a_checkpoints_weights(tmp_path, capsys):
    from minidist.train import main
    pre, ft = tmp_path / "pre.json", tmp_path / "ft.json"
    base = {k: v for k, v in BASE.items() if k != "dtype"}
    pre.write_text(json.dumps(base))
    ft.write_text(json.dumps({**base, "data": {"dataset": "english", "seq_len": 6}, "peft": METHODS["lora"]}))
    assert main(["--config", str(pre), "--quiet", "--save", str(tmp_path / "ck")]) == 0
    assert main(["--config", str(ft), "--quiet", "--load", str(tmp_path / "ck"), "--load-weights-only",
                 "--world-size", "2"]) == 0
    out = capsys.readouterr().out
    assert "done: 2 steps on 2 rank(s)" in out
    for flags in (["--save", str(tmp_path / "x")], ["--load", str(tmp_path / "ck")]):
        assert main(["--config", str(ft), "--quiet", *flags]) == 2
        assert "--load DIR --load-weights-only" in capsys.readouterr().err


def test_prefix_methods_with_context_parallelism_are_refused_naming_the_way_out():
    """The prefixes are extra key/value positions the ring and the all-to-all do not carry:
    refused before any rank starts (it used to fail inside attention with a shape error)."""
    from minidist.training.config import ConfigError, load_config
    cfg = {"model": {"n_layer": 2, "n_embd": 16, "n_head": 4, "block_size": 16}, "data": {"seq_len": 16},
           "parallel": {"context": {"size": 2, "algorithm": "ring"}}}
    for peft in ({"peft_type": "PREFIX_TUNING", "num_virtual_tokens": 2},
                 {"peft_type": "PREFIX_TUNING", "num_virtual_tokens": 2, "prefix_projection": False}):
        with pytest.raises(ConfigError, match="peft.peft_type.*use peft_type LORA with parallel.context"):
            load_config({**cfg, "peft": peft}, 2)
    assert load_config({**cfg, "peft": {"peft_type": "LORA", "r": 2}}, 2)["peft"]["peft_type"] == "LORA"


def test_target_modules_take_every_layer_by_its_short_or_qualified_name_and_the_api_checks_them():
    """As Hugging Face PEFT matches names (the whole name or its suffix): 'mlp.c_fc' and
    'attn.c_attn' are as good as 'c_fc' and 'c_attn' in a config; get_peft_model checks its
    section as a config's (a name of no layer froze the whole model without a word, r = 0
    divided by zero)."""
    h = 16
    shapes = {"attn.c_attn": (h, 3 * h), "attn.c_proj": (h, h), "mlp.c_fc": (h, 4 * h), "mlp.c_proj": (4 * h, h)}
    for targets, names in ((["mlp.c_fc"], ["mlp.c_fc"]), (["attn.c_attn"], ["attn.c_attn"]),
                           (["c_proj"], ["attn.c_proj", "mlp.c_proj"]), ("c_attn", ["attn.c_attn"])):
        cfg = config(None, peft={"peft_type": "LORA", "r": 2, "target_modules": targets})
        assert load_config(cfg, 1)["peft"]["target_modules"] == ([targets] if isinstance(targets, str) else targets)
        model = get_peft_model(GPT(GPTConfig(block_size=8, vocab_size=11, n_layer=2, n_head=2, n_embd=16), seed=0),
                               {"peft_type": "LORA", "r": 2, "target_modules": targets})
        got = sorted((layer.lora_A.shape[0], layer.lora_B.shape[1]) for layer in lora_layers(model))
        assert got == sorted(shapes[n] for n in names for _ in range(2)), (targets, got)   # 2 blocks
    for peft, key in (({"peft_type": "LORA", "target_modules": ["q_proj"]}, "peft.target_modules"),
                      ({"peft_type": "LORA", "r": 0}, "peft.r"), ({"peft_type": "LORA", "rr": 3}, "peft.rr")):
        with pytest.raises(ConfigError) as e:
            get_peft_model(GPT(GPTConfig(block_size=8, vocab_size=11, n_layer=2, n_head=2, n_embd=16), seed=0), peft)
        assert e.value.key == key


def test_a_refused_fine_tuning_method_is_named_by_its_own_type():
    """The support matrix's row is named after LoRA; a refusal names the config's method."""
    cfg = config(None, peft={"peft_type": "ADAPTER", "bottleneck_size": 4}, parallel={"tensor": 2})
    with pytest.raises(ConfigError, match=r"PEFT \(ADAPTER\) \(peft\) with TP \(parallel.tensor\)"):
        load_config(cfg, 2)
