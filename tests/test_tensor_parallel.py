"""Tensor and sequence parallelism train exactly like one rank (float64, relative ≤ 1e-9 per
step), alone, over DP / ZeRO-1 / ZeRO-2, with dropout and accumulation; shards are slices of
the one-rank weights; bad input is refused on every rank before training."""
import copy

import numpy as np
import pytest

from minidist import distributed as dist
from minidist.model import GPT, GPTConfig, parameter_splits
from minidist.parallel.grid import GridShape
from minidist.parallel.tensor import gather_state_dict, padded_vocab_size, shard_state_dict
from minidist.testing import train_steps
from _refusal import trainer_errors

pytestmark = [pytest.mark.tensor, pytest.mark.timeout(60)]

BASE = {"model": {"n_layer": 2, "n_embd": 16, "n_head": 4, "block_size": 8, "dropout": 0.1},
        "data": {"dataset": "english", "seq_len": 8}, "steps": 3, "dtype": "float64",
        "train_micro_batch_size_per_gpu": 4, "eval_iters": 1}
GLOBAL_BATCH = 4
_REFERENCE = {}


def config(tp=1, dp=1, sp=False, **extra):
    cfg = copy.deepcopy(BASE)
    cfg["parallel"] = {"tensor": tp, "sequence_parallel": sp}
    cfg["train_micro_batch_size_per_gpu"] = GLOBAL_BATCH // dp
    cfg.update(extra)
    return cfg


def reference(accumulation=1):
    """One rank on the whole global batch (computed once per accumulation)."""
    if accumulation not in _REFERENCE:
        _REFERENCE[accumulation] = train_steps(config(gradient_accumulation_steps=accumulation))
    return _REFERENCE[accumulation]


def rel_diff(a: dict, b: dict) -> float:
    assert set(a) == set(b)
    return max(float(np.max(np.abs(a[k] - b[k])) / np.max(np.abs(b[k]))) for k in a)


@pytest.mark.parametrize("tp,dp,sp,extra", [
    (2, 1, False, {}), (4, 1, False, {}), (2, 2, False, {}),
    (2, 1, True, {}), (4, 1, True, {}),
    (2, 2, True, {"zero_optimization": {"stage": 1}}),
    (2, 2, True, {"zero_optimization": {"stage": 2}, "gradient_accumulation_steps": 2}),
], ids=["tp2", "tp4", "tp2xdp2", "tp2+sp", "tp4+sp", "tp2xdp2+sp+zero1", "tp2xdp2+sp+zero2+accum2"])
def test_trains_like_one_rank(tp, dp, sp, extra):
    ref = reference(extra.get("gradient_accumulation_steps", 1))
    runs = dist.spawn(train_steps, tp * dp, config(tp, dp, sp, **extra))
    shape = GridShape(tp * dp, tp)
    V = ref["trainer"].model_config.vocab_size
    for step in range(BASE["steps"]):
        for run in runs:                # every rank: its replica, gathered over its tp ranks by train_steps
            assert rel_diff(run["params"][step], ref["params"][step]) <= 1e-9
        # the global batch's loss is the mean of the dp slices' losses; tp ranks agree exactly
        loss = np.mean([runs[shape.rank_of(dp=d)]["history"][step]["loss"] for d in range(dp)])
        assert abs(loss - ref["history"][step]["loss"]) <= 1e-9 * abs(ref["history"][step]["loss"])
        assert len({r["history"][step]["loss"] for r in runs[:tp]}) == 1
    assert runs[0]["trainer"].model.transformer.wte.weight.shape[0] == padded_vocab_size(V, tp) // tp


def test_shards_are_slices_of_the_one_rank_weights_and_vocab_is_padded():
    cfg = GPTConfig(block_size=8, vocab_size=75, n_layer=1, n_head=4, n_embd=16)
    model = GPT(cfg, seed=5, dtype=np.float64)
    full, splits = model.state_dict(), parameter_splits(model)
    # Megatron's padding: up to a multiple of make_vocab_size_divisible_by × t
    assert [padded_vocab_size(75, t, d) for t, d in ((1, 1), (2, 1), (4, 1), (2, 128))] == [75, 76, 76, 256]
    for t in (2, 4):
        shards = [shard_state_dict(full, splits, t, r) for r in range(t)]
        back = gather_state_dict(shards, splits, 75)
        assert all(np.array_equal(back[k], full[k]) for k in full)
        C, n = 16, 16 // t
        for r, sd in enumerate(shards):
            w = sd["transformer.h.0.attn.c_attn.weight"]                  # (C, 3C/t): my heads' q, k, v
            for j in range(3):
                assert np.array_equal(w[:, j * n:(j + 1) * n], full["transformer.h.0.attn.c_attn.weight"]
                                      [:, j * C + r * n:j * C + (r + 1) * n])
            assert np.array_equal(sd["transformer.h.0.mlp.c_proj.weight"],
                                  full["transformer.h.0.mlp.c_proj.weight"][r * 4 * n:(r + 1) * 4 * n])
            assert np.array_equal(sd["transformer.h.0.attn.c_proj.bias"], full["transformer.h.0.attn.c_proj.bias"])
        assert not shards[-1]["transformer.wte.weight"][75 - 76:].any()   # the padded row is zero


@pytest.mark.parametrize("world,change,key,words", [
    (3, {"parallel": {"tensor": 3}}, "parallel.tensor", "n_head 4 is not divisible by parallel.tensor 3"),
    (4, {"parallel": {"tensor": 4}, "model": {"n_embd": 18}}, "parallel.tensor", "n_embd 18 is not divisible"),
    (3, {"parallel": {"tensor": 2}}, "parallel", "world size 3 is not divisible by tensor × pipeline = 2"),
    (2, {"parallel": {"tensor": 2, "sequence_parallel": True}, "data": {"seq_len": 7}},
     "parallel.sequence_parallel", "sequence length 7 is not divisible by parallel.tensor 2"),
    (2, {"parallel": {"tensor": 4}}, "parallel.tensor", "greater than the world size 2"),
    (2, {"parallel": {"sequence_parallel": True}}, "parallel.sequence_parallel", "needs parallel.tensor > 1"),
], ids=["heads", "hidden", "world", "sp-seq", "tp>world", "sp-without-tp"])
def test_bad_input_is_refused_on_every_rank_before_training(world, change, key, words):
    cfg = copy.deepcopy(BASE)
    for section, values in change.items():
        cfg[section] = {**cfg.get(section, {}), **values}
    errors = trainer_errors(cfg, world, timeout=10)
    assert len(errors) == world
    for e in errors:                    # every rank, the same message, naming the key and the numbers
        assert e is not None and e.startswith(f"config key '{key}'") and words in e, e


def test_megatron_vocab_padding_from_the_config_trains_like_one_rank():
    cfg = config(2)
    cfg["parallel"]["make_vocab_size_divisible_by"] = 64      # 75 → 128 rows: 53 zero rows, masked logits
    ref = reference()
    runs = dist.spawn(train_steps, 2, cfg)
    V = ref["trainer"].model_config.vocab_size
    assert runs[1]["trainer"].model.layers.padded_vocab_size == 128
    assert runs[1]["trainer"].model.transformer.wte.weight.shape == (64, 16)
    for step in range(BASE["steps"]):
        assert rel_diff(runs[0]["params"][step], ref["params"][step]) <= 1e-9
    assert not runs[1]["trainer"].model.transformer.wte.weight.data[V - 64:].any()   # padding stays zero


def _logits(comm, cfg, ids, sp):
    from minidist.parallel.grid import ProcessGrid
    from minidist.parallel.tensor import TensorParallelLayers
    from minidist.tensor import no_grad
    layers = TensorParallelLayers(ProcessGrid(comm, tp=comm.size).tp, sequence_parallel=sp)
    model = GPT(cfg, seed=1, dtype=np.float64, layers=layers)
    with no_grad():
        return model(ids)[0].data


@pytest.mark.parametrize("T", [8, 7], ids=["T divides t", "T odd: this forward runs without SP"])
def test_generation_gathers_the_whole_logits(T):
    cfg = GPTConfig(block_size=8, vocab_size=13, n_layer=1, n_head=4, n_embd=16)
    ids = np.random.default_rng(0).integers(0, 13, (2, T))
    ref = GPT(cfg, seed=1, dtype=np.float64)(ids)[0].data                  # (B, T, V)
    for got in dist.spawn(_logits, 2, cfg, ids, True):                     # every rank: all V columns
        assert got.shape == (2, T, 13) and np.max(np.abs(got - ref)) <= 1e-12


@pytest.mark.parametrize("tp,sp,mixed", [(2, False, False), (4, True, False), (2, True, True)],
                         ids=["tp2", "tp4+sp", "tp2+sp+bf16"])
def test_lamb_takes_whole_tensor_norms_over_the_tp_slices(tp, sp, mixed):
    """LAMB's trust ratio ‖w‖/‖u‖ is per tensor (You et al. 2020): a slice's norms would train
    another model (5e-4 off one rank after 20 steps before the slices' squares were summed)."""
    lamb = {"optimizer": {"type": "LAMB", "params": {"lr": 1e-2, "weight_decay": 0.01}}, "steps": 6}
    if mixed:
        lamb.update(dtype="float32", bf16={"enabled": True})
    ref = train_steps(config(**lamb))
    runs = dist.spawn(train_steps, tp, config(tp, 1, sp, **lamb))
    for step in range(6):
        got, want = runs[0]["params"][step], ref["params"][step]
        if not mixed:
            assert rel_diff(got, want) <= 1e-9
        else:                                   # bf16 rounds in other orders: the whole model, ‖Δw‖/‖w‖
            diff = np.sqrt(sum(np.sum((got[k] - want[k]) ** 2.0) for k in want))
            assert diff / np.sqrt(sum(np.sum(want[k] ** 2.0) for k in want)) <= 2e-2
