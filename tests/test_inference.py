"""Generation with a KV cache (minidist.inference, GPT.generate): the same tokens with and without
the cache, cache bytes and FLOPs per token equal to their formulas, prefill and decode as spans on
the timeline, tensor-parallel decoding on 2 and 4 ranks equal to one rank with the bytes of its
collectives, greedy_decode on the cache, bad arguments refused."""
import copy

import numpy as np
import pytest

from minidist import distributed as dist
from minidist import functional as F
from minidist.autocast import autocast
from minidist.device import Device, export_chrome_trace
from minidist.gradcheck import gradcheck
from minidist.inference import (KVCache, bytes_sent_in, forward_matmul_flops, kv_cache_bytes_per_token,
                                non_embedding_parameters, weight_matrix_parameters)
from minidist.memory import CATEGORIES
from minidist.model import GPT, GPTConfig, Recompute
from minidist.ops.attention import attention_reference
from minidist.parallel.tensor import TensorParallelLayers
from minidist.parallel.tensor.accounting import decode_step_bytes
from minidist.tensor import Tensor, no_grad
from minidist.training.data import greedy_decode
from minidist.training.trainer import Trainer

pytestmark = [pytest.mark.inference, pytest.mark.timeout(120)]

CFG = GPTConfig(block_size=16, vocab_size=13, n_layer=2, n_head=4, n_embd=16)
PROMPT = np.random.default_rng(0).integers(0, 13, (2, 5))              # (B, P)
SAMPLED = {"temperature": 0.9, "top_k": 5, "seed": 3}


def _model(cfg=CFG, dtype=np.float64, **kw):
    return GPT(cfg, seed=1, dtype=dtype, **kw)


def _run(model, n, fmt=None, **kw):
    dev = Device()
    with dev, autocast(fmt):
        out = model.generate(PROMPT, n, **kw)
    return out, dev


# -- the op: fewer queries than keys -------------------------------------------------------------
def test_attention_with_a_cache_is_causal_from_the_bottom_right_and_its_gradients_check():
    rng = np.random.default_rng(0)
    q, k, v = rng.normal(size=(2, 3, 4, 5)), rng.normal(size=(2, 3, 9, 5)), rng.normal(size=(2, 3, 9, 5))
    y = F.scaled_dot_product_attention(Tensor(q), Tensor(k), Tensor(v), is_causal=True)
    np.testing.assert_allclose(y.data, attention_reference(q, k, v), rtol=1e-12, atol=1e-14)
    # the last 4 of 9 positions: the same as those rows of the full causal attention over 9 queries
    full = attention_reference(np.concatenate([rng.normal(size=(2, 3, 5, 5)), q], axis=2), k, v)
    np.testing.assert_allclose(y.data, full[:, :, 5:], rtol=1e-12, atol=1e-14)
    inputs = [Tensor(a, requires_grad=True) for a in (q[:1, :2, :2], k[:1, :2, :5], v[:1, :2, :5])]
    assert gradcheck(lambda a, b, c: F.scaled_dot_product_attention(a, b, c, is_causal=True), inputs) < 1e-6
    with pytest.raises(ValueError, match="Tk >= T when causal"):
        F.scaled_dot_product_attention(Tensor(k), Tensor(q), Tensor(q), is_causal=True)


# -- tokens -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("sampling", [{"temperature": 0.0}, SAMPLED, {"temperature": 1.0, "seed": 7}],
                         ids=["greedy", "top-k", "sampled"])
def test_the_same_tokens_with_and_without_the_cache_past_block_size_too(sampling):
    model = _model()
    n = CFG.block_size + 5 - PROMPT.shape[1]                              # the window slides 4 times
    cached, dev = _run(model, n, **sampling)
    full, _ = _run(model, n, use_cache=False, **sampling)
    assert cached.shape == (2, 5 + n) and np.array_equal(cached[:, :5], PROMPT)
    assert np.array_equal(cached, full)
    names = [p["name"] for p in dev.phases()]
    assert names == ["prefill"] + ["decode"] * (CFG.block_size - 5) + ["prefill"] * 4
    assert model.training                                                 # the mode is restored


def test_decode_logits_equal_the_full_forward_and_recomputation_changes_nothing():
    model = _model()
    ids = np.random.default_rng(2).integers(0, 13, (2, 9))
    cache = KVCache()
    with no_grad():
        model(ids[:, :6], kv_cache=cache)                                 # prefill 6 positions
        got = [model(ids[:, t:t + 1], kv_cache=cache, logits_to_keep=1)[0].data for t in range(6, 9)]
        want = model(ids)[0].data                                         # (B, 9, V) in one forward
    assert len(cache) == 9 and cache[0].k.shape == (2, 4, 9, 4)          # (B, nh, L, hs)
    for t, g in zip(range(6, 9), got):
        np.testing.assert_allclose(g[:, 0], want[:, t], rtol=0, atol=1e-12)
    base = model.generate(PROMPT, 6, **SAMPLED)
    for granularity in ("selective", "full"):
        model.set_recompute(Recompute(granularity))
        assert np.array_equal(model.generate(PROMPT, 6, **SAMPLED), base)


# -- memory --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype,fmt,w", [(np.float64, None, 8), (np.float32, None, 4), (np.float32, "bf16", 2)],
                         ids=["float64", "float32", "bf16"])
def test_cache_bytes_per_token_are_2_n_layer_n_embd_w(dtype, fmt, w):
    out, dev = _run(_model(dtype=dtype), 6, fmt, temperature=0.0)
    per = kv_cache_bytes_per_token(CFG, w)
    assert per == 2 * CFG.n_layer * CFG.n_embd * w
    spans = dev.phases()
    for p in spans:                                                      # B = 2 sequences
        assert p["kv_cache_bytes"] == p["memory"]["kv_cache"] == 2 * per * p["context"]
    assert "kv_cache" in CATEGORIES and dev.memory.current["kv_cache"] == 0        # freed at the end
    # the peak: the last step's cache, plus one layer's grown arrays while its old ones still live
    assert 2 * per * spans[-1]["context"] < dev.memory.peak_by_category["kv_cache"] <= 2 * per * (spans[-1]["context"] + 6)
    assert dev.memory.current["activations"] == dev.memory.peak_by_category["activations"] == 0   # no_grad


# -- FLOPs -----------------------------------------------------------------------------------------------
def test_flops_per_token_with_and_without_the_cache_equal_their_formulas():
    model = _model()
    N_w = weight_matrix_parameters(CFG)
    assert N_w == sum(p.size for n, p in model.named_parameters() if p.ndim == 2 and ".h." in n)
    assert non_embedding_parameters(CFG) == sum(p.size for n, p in model.named_parameters() if "wte" not in n
                                                and "wpe" not in n)
    for use_cache in (True, False):
        _, dev = _run(model, 8, use_cache=use_cache, temperature=0.0)
        for p in dev.phases():
            terms = forward_matmul_flops(CFG, p["tokens"], p["context"], batch=2)
            assert p["matmul_flops"] == sum(terms.values()), p
            assert p["tokens"] == (1 if use_cache and p["name"] == "decode" else p["context"])
        if use_cache:
            L = dev.phases()[-1]["context"]
            assert terms == {"2·N_w per position": 2 * 2 * N_w, "tied head 2·n_embd·vocab": 2 * 2 * 16 * 13,
                             "attention 4·n_layer·positions·context·n_embd": 2 * 4 * 2 * L * 16}
    # Kaplan et al. 2020's 2·n_layer·n_ctx·d per token is the mean of 4·n_layer·L·d over a causal window
    n_ctx = CFG.block_size
    mean = np.mean([forward_matmul_flops(CFG, 1, L)["attention 4·n_layer·positions·context·n_embd"]
                    for L in range(1, n_ctx + 1)])
    assert mean == 2 * CFG.n_layer * (n_ctx + 1) * CFG.n_embd


# -- the timeline -----------------------------------------------------------------------------------------
def test_prefill_and_decode_are_spans_holding_their_ops(tmp_path):
    _, dev = _run(_model(), 4, **SAMPLED)
    spans = dev.phases()
    assert [(p["name"], p["tokens"], p["context"]) for p in spans] == \
        [("prefill", 5, 5), ("decode", 1, 6), ("decode", 1, 7), ("decode", 1, 8)]
    assert all(a["t_end"] == b["t_start"] for a, b in zip(spans, spans[1:]))
    ops = [e for e in dev.trace.events if e["cat"] == "compute"]
    assert ops and all(any(p["t_start"] <= e["ts"] / 1e6 <= p["t_end"] for p in spans) for e in ops)
    doc = export_chrome_trace([dev], tmp_path / "trace.json")
    assert [e["name"] for e in doc["traceEvents"] if e.get("tid") == "phase"] == ["prefill"] + ["decode"] * 3


# -- tensor parallelism ------------------------------------------------------------------------------------
def _tp(comm, sampling, sp):
    layers = TensorParallelLayers(comm, sequence_parallel=sp)
    model = _model(layers=layers)
    with comm.device:
        out = model.generate(PROMPT[:, :4], 6, **sampling)
    spans = comm.device.phases()
    return {"tokens": out, "cache": [p["kv_cache_bytes"] for p in spans], "context": [p["context"] for p in spans],
            "sent": [bytes_sent_in(comm.log, p) for p in spans], "vocab": layers.padded_vocab_size}


@pytest.mark.parametrize("t", [2, 4])
def test_tensor_parallel_decoding_equals_one_rank_with_the_cache_split_by_heads(t):
    for sampling, sp in (({"temperature": 0.0}, False), (SAMPLED, True)):
        want = _model().generate(PROMPT[:, :4], 6, **sampling)
        for r in dist.spawn(_tp, t, sampling, sp):
            assert np.array_equal(r["tokens"], want)
            per_rank = kv_cache_bytes_per_token(CFG, 8, t)
            assert per_rank * t == kv_cache_bytes_per_token(CFG, 8)
            assert r["cache"] == [2 * per_rank * L for L in r["context"]]
            # a decode step: the embedding's g, two g per layer, the gather of the logits; nothing else
            step = decode_step_bytes(CFG.n_layer, 2, CFG.n_embd, r["vocab"], t, w=8)
            assert r["sent"][1:] == [step] * 5
            assert step == (2 * CFG.n_layer + 1) * 2 * (t - 1) * (2 * 16 // t) * 8 + (t - 1) * (2 * r["vocab"] // t) * 8
            if not sp:                      # the prefill: the same collectives over P positions
                assert r["sent"][0] == decode_step_bytes(CFG.n_layer, 2, CFG.n_embd, r["vocab"], t, w=8, tokens=4)


# -- greedy_decode and refusals -------------------------------------------------------------------------------
def test_greedy_decode_prefills_once_then_decodes_one_position_per_token():
    model = _model()
    dev = Device()
    with dev:
        got = greedy_decode(model, PROMPT, 5)
    assert np.array_equal(got, model.generate(PROMPT, 5, temperature=0.0, use_cache=False)[:, 5:])
    assert [(p["name"], p["tokens"]) for p in dev.phases()] == [("prefill", 5)] + [("decode", 1)] * 4


ZERO3 = {"model": {"n_layer": 2, "n_embd": 16, "n_head": 4, "block_size": 16}, "data": {"dataset": "copy", "n_digits": 3},
         "dtype": "float64", "eval_iters": 1, "train_micro_batch_size_per_gpu": 2, "zero_optimization": {"stage": 3}}


def _zero3_decode(comm):
    trainer = Trainer(copy.deepcopy(ZERO3), comm)
    trainer.train_step(0)
    return greedy_decode(trainer.model, PROMPT[:, :4] % 10, 5), trainer.full_parameters()


def test_greedy_decode_under_zero3_gathers_each_layer_as_training_does():
    """ZeRO-3's hooks gather the root and every block for each prefill and decode step."""
    runs = dist.spawn(_zero3_decode, 2)
    one = Trainer({**ZERO3, "zero_optimization": {"stage": 0}})
    one.model.load_state_dict(runs[0][1])
    want = greedy_decode(one.model, PROMPT[:, :4] % 10, 5)
    assert all(np.array_equal(tokens, want) for tokens, _ in runs)


def _tp_unseeded(comm):
    try:
        _model(layers=TensorParallelLayers(comm)).generate(PROMPT, 2)
    except ValueError as e:
        return str(e)


def test_bad_arguments_and_pipeline_stages_are_refused():
    model = _model()
    for kwargs, match in (({"max_new_tokens": -1}, "max_new_tokens must be an integer >= 0"),
                          ({"max_new_tokens": 2, "temperature": -0.5}, "temperature must be >= 0"),
                          ({"max_new_tokens": 2, "top_k": 0}, "top_k must be a positive integer")):
        with pytest.raises(ValueError, match=match):
            model.generate(PROMPT, **kwargs)
    with pytest.raises(ValueError, match="time >= 1"):
        model.generate(np.zeros((1, 0), dtype=int), 3)
    assert np.array_equal(model.generate(PROMPT, 0), PROMPT)
    with pytest.raises(ValueError, match="one pipeline stage"):
        _model(layer_ids=[0], post_process=False).generate(PROMPT, 2)
    assert set(dist.spawn(_tp_unseeded, 2)) == {"sampling on 2 tensor-parallel ranks needs a seed, so that every "
                                                "rank draws the same token; give seed=... (or temperature=0 for "
                                                "greedy decoding)"}


def test_prompts_that_are_not_token_ids_are_refused_and_a_tiny_temperature_is_greedy():
    model = _model()
    V = model.config.vocab_size
    for bad in (PROMPT + 0.5, np.full((1, 3), V), np.full((1, 3), -1), np.ones((1, 3), dtype=bool)):
        with pytest.raises(ValueError, match=r"generate expects token ids, integers in \[0, vocab_size = "):
            model.generate(bad, 2)
    np.testing.assert_array_equal(model.generate(PROMPT.astype(float), 3, temperature=0),
                                  model.generate(PROMPT, 3, temperature=0))
    # a subnormal temperature: logits / T would overflow and give NaN probabilities; it samples greedily
    from minidist.inference import sample
    logits = np.array([[0.5, 2.0, -1.0, 1.9], [3.0, -3.0, 0.0, 2.9]])
    rng = np.random.default_rng(0)
    for t in (5e-324, 1e-300, 1e-12):
        np.testing.assert_array_equal(sample(logits, t, None, rng), logits.argmax(axis=-1))
        np.testing.assert_array_equal(sample(logits, t, 2, rng), logits.argmax(axis=-1))


@pytest.mark.parametrize("kwargs,words", [({"seed": -1}, "seed must be an integer >= 0"),
                                          ({"seed": 1.5}, "seed must be an integer >= 0"),
                                          ({"temperature": None}, "temperature must be a number"),
                                          ({"temperature": "0.5"}, "temperature must be a number")])
def test_generate_refuses_a_bad_seed_or_temperature_by_name(kwargs, words):
    """They reached NumPy (default_rng, isfinite) and failed there without naming the argument."""
    model = GPT(GPTConfig(block_size=8, vocab_size=11, n_layer=1, n_head=2, n_embd=8), seed=0)
    with pytest.raises(ValueError, match=words):
        model.generate(np.zeros((1, 2), dtype=np.int64), 3, **kwargs)


def test_the_generate_command_refuses_a_negative_seed(capsys):
    from minidist.generate import main
    assert main(["--load", "/nonexistent", "--prompt", "a", "--seed", "-1"]) == 2
    assert "seed must be an integer >= 0" in capsys.readouterr().err
