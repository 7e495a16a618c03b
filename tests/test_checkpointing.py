"""Activation checkpointing (minidist.recompute; the config's ``activation_checkpointing``):
values never change — bit-identical to no recomputation on one rank, under TP + SP, under
pipeline schedules with a split backward, and in 3D; ``full`` costs exactly one more forward
of the blocks; the activations kept per layer follow Korthikanti et al. 2022 (2sbh per layer
for full, 2sbh/t under sequence parallelism; selective drops the attention scores)."""
import copy

import numpy as np
import pytest

from minidist import distributed as dist
from minidist.device import Device
from minidist.model import GPT, GPTConfig, Recompute
from minidist.testing import train_steps

pytestmark = [pytest.mark.checkpointing, pytest.mark.timeout(120)]

BASE = {"model": {"n_layer": 4, "n_embd": 16, "n_head": 4, "block_size": 8, "dropout": 0.1},
        "data": {"dataset": "english", "seq_len": 8}, "dtype": "float64", "steps": 2, "eval_iters": 1,
        "train_micro_batch_size_per_gpu": 2, "gradient_accumulation_steps": 2,
        "optimizer": {"type": "Adam", "params": {"lr": 1e-2}}}
POLICIES = {"selective": {"granularity": "selective"}, "full": {"granularity": "full"},
            "full_uniform_2": {"granularity": "full", "num_layers": 2},
            "full_block_1": {"granularity": "full", "method": "block", "num_layers": 1}}


def config(policy=None, **extra):
    cfg = copy.deepcopy(BASE)
    cfg.update(extra)
    if policy:
        cfg["activation_checkpointing"] = POLICIES[policy]
    return cfg


def assert_identical(a, b):
    assert [h["loss"] for h in a["history"]] == [h["loss"] for h in b["history"]]
    for pa, pb in zip(a["params"], b["params"]):
        for k in pb:
            assert np.array_equal(pa[k], pb[k]), k


@pytest.mark.parametrize("policy", list(POLICIES))
def test_one_rank_is_bit_identical_to_no_recomputation(policy):
    assert_identical(train_steps(config(policy)), train_steps(config()))


def test_bf16_full_recomputation_is_bit_identical():
    mixed = {"dtype": "float32", "bf16": {"enabled": True}}
    assert_identical(train_steps(config("full", **mixed)), train_steps(config(**mixed)))


LAYOUTS = {   # id: (world, parallel section)
    "tp2+sp": (2, {"tensor": 2, "sequence_parallel": True}),
    "pp2_zb_h1": (2, {"pipeline": 2, "schedule": "zb_h1"}),               # B and W apart
    "pp2_interleaved": (2, {"pipeline": 2, "schedule": "interleaved_1f1b", "virtual_stages": 2}),
    "dp2xtp2xpp2_zb_v": (8, {"tensor": 2, "pipeline": 2, "schedule": "zb_v", "sequence_parallel": True}),
}


@pytest.mark.parametrize("layout", list(LAYOUTS))
@pytest.mark.parametrize("policy", ["selective", "full_uniform_2", "full_block_1"])
def test_parallel_layouts_are_bit_identical_to_no_recomputation(layout, policy):
    world, par = LAYOUTS[layout]
    extra = {"parallel": par, "gradient_accumulation_steps": 4}
    if world == 8:
        extra["zero_optimization"] = {"stage": 1}
    with_ = dist.spawn(train_steps, world, config(policy, **extra), timeout=60)
    without = dist.spawn(train_steps, world, config(**extra), timeout=60)
    for a, b in zip(with_, without):
        assert_identical(a, b)


CFG = GPTConfig(block_size=8, vocab_size=11, n_layer=4, n_head=4, n_embd=16, dropout=0.0)


def _step(recompute, n_layer=4, dtype=np.float64):
    """One forward and backward on a fresh device: (flops by op, activations at the end of forward)."""
    cfg = GPTConfig(**{**vars(CFG), "n_layer": n_layer})
    ids = np.random.default_rng(0).integers(0, 11, (2, 8))
    dev = Device("laptop")
    with dev:
        model = GPT(cfg, seed=1, dtype=dtype).set_recompute(recompute)
        _, loss = model(ids, ids)
        held = dev.memory.current["activations"]
        loss.backward()
    return dev, held


def test_full_recomputation_costs_exactly_one_more_forward_of_the_blocks():
    none, _ = _step(Recompute())
    full, _ = _step(Recompute("full"))
    dev = Device("laptop")                            # one forward of the blocks alone
    with dev:
        model = GPT(CFG, seed=1, dtype=np.float64)
        x = model.embed(np.random.default_rng(0).integers(0, 11, (2, 8)))
        before, before_mm = dev.flops, dev.matmul_flops
        model.blocks(x)
        blocks_forward, blocks_matmuls = dev.flops - before, dev.matmul_flops - before_mm
    recomputed = sum(v for k, v in full.flops_by_op.items() if k.startswith("recompute "))
    assert recomputed == blocks_forward > 0
    assert full.flops - none.flops == blocks_forward
    # the blocks' matmuls: 6·N·D becomes 8·N·D (forward 2, backward 4, recompute 2 per weight per token)
    assert full.matmul_flops - none.matmul_flops == blocks_matmuls
    N, D = 12 * CFG.n_embd ** 2 * CFG.n_layer, 2 * 8                   # the blocks' weights, the tokens
    assert blocks_matmuls >= 2 * N * D                                 # plus attention's QKᵀ and PV


def test_full_keeps_2sbh_per_layer_and_selective_drops_the_attention_scores():
    """Per layer = (4 layers − 2 layers) / 2: only the layers' bytes, whatever the ends hold."""
    s, b, h, a, w = 8, 2, 16, 4, 8                    # float64: 8 bytes an element
    per_layer = lambda r: (_step(r, 4)[1] - _step(r, 2)[1]) / 2
    assert per_layer(Recompute("full")) == w * s * b * h                  # the block input: 2sbh in 16 bits
    none, selective = per_layer(Recompute()), per_layer(Recompute("selective"))
    assert none - selective == w * a * s * s * b                         # the (a, s, s) probabilities
    assert per_layer(Recompute("full", "uniform", 2)) == w * s * b * h / 2  # one input per two layers


def _tp_model(grid, n_layer, recompute, sp=False):
    """CFG with ``n_layer`` blocks on this tp rank (plain layers on one rank), float64."""
    from minidist.parallel.tensor import TensorParallelLayers
    layers = TensorParallelLayers(grid.tp, sequence_parallel=sp) if grid.tp_size > 1 else None
    model = GPT(GPTConfig(**{**vars(CFG), "n_layer": n_layer}), seed=1, dtype=np.float64, layers=layers)
    return model.set_recompute(recompute)


def _per_layer_tp(comm, recompute):
    from minidist.parallel.grid import ProcessGrid
    grid = ProcessGrid(comm, tp=comm.size)
    held = []
    for n_layer in (4, 2):
        dev = Device("laptop")
        with dev:
            model = _tp_model(grid, n_layer, recompute, sp=True)
            ids = np.random.default_rng(0).integers(0, 11, (2, 8))
            model(ids, ids)
            held.append(dev.memory.current["activations"])
    return (held[0] - held[1]) / 2


def test_under_sequence_parallelism_full_keeps_2sbh_over_t_and_selective_drops_my_heads_scores():
    s, b, h, a, w, t = 8, 2, 16, 4, 8, 2
    assert dist.spawn(_per_layer_tp, t, Recompute("full")) == [w * s * b * h / t] * t
    none = dist.spawn(_per_layer_tp, t, Recompute())
    selective = dist.spawn(_per_layer_tp, t, Recompute("selective"))
    assert [n - m for n, m in zip(none, selective)] == [w * a * s * s * b / t] * t


S, B, H, A = 16, 2, 32, 4


def korthikanti(granularity: str, t: int = 1, sp: bool = False) -> float:
    """Korthikanti et al. 2022 (Table 2 and §5) per layer: 16-bit activations, 1-byte masks."""
    sbh, attn = S * B * H, 5 * A * S / H
    if granularity == "full":
        return 2 * sbh / (t if sp else 1)                                  # the block input
    if sp:
        return sbh / t * (34 + (attn if granularity == "none" else 0))
    return sbh * (10 + 24 / t + (attn / t if granularity == "none" else 0))


def engine_extras(granularity: str, t: int = 1, sp: bool = False) -> float:
    """What the engine keeps that the paper does not count: LayerNorm runs in fp32, so its two
    normalised inputs take 4 bytes an element (the paper's 2: +4sbh), and it keeps 1/σ per
    token in fp32 (+8sb) — both in the regions sequence parallelism splits by t."""
    if granularity == "full":
        return 0
    return (4 * S * B * H + 8 * S * B) / (t if sp else 1)


def _per_layer_bf16(comm, granularity, sp):
    """Activation bytes one layer holds at the end of forward, bf16, dropout 0.1."""
    from minidist.autocast import autocast
    from minidist.parallel.grid import ProcessGrid
    from minidist.parallel.tensor import TensorParallelLayers
    layers = TensorParallelLayers(ProcessGrid(comm, tp=comm.size).tp, sequence_parallel=sp) if comm.size > 1 else None
    held = []
    for n_layer in (4, 2):
        dev = Device("laptop")
        with dev:
            cfg = GPTConfig(block_size=S, vocab_size=11, n_layer=n_layer, n_head=A, n_embd=H, dropout=0.1)
            model = GPT(cfg, seed=1, layers=layers).set_recompute(Recompute(granularity))
            model.set_dropout_key(0, 0)
            with autocast("bf16"):
                model(np.random.default_rng(0).integers(0, 11, (B, S)), np.zeros((B, S), dtype=int))
            held.append(dev.memory.current["activations"])
    return (held[0] - held[1]) / 2


@pytest.mark.parametrize("t,sp", [(1, False), (2, False), (2, True), (4, True)], ids=["one", "tp2", "tp2+sp", "tp4+sp"])
@pytest.mark.parametrize("granularity", ["none", "selective", "full"])
def test_activation_bytes_per_layer_are_korthikantis_to_the_byte_after_the_named_extras(granularity, t, sp):
    got = dist.spawn(_per_layer_bf16, t, granularity, sp)
    assert got == [korthikanti(granularity, t, sp) + engine_extras(granularity, t, sp)] * t


def test_the_estimator_writes_korthikantis_table_with_the_sequence_parallel_full_shard():
    from minidist.estimate.activations import layer_activation_bytes
    for granularity in ("none", "selective", "full"):
        for t, sp in ((1, False), (2, False), (2, True), (4, True)):
            assert layer_activation_bytes(S, B, H, A, t, sp, granularity) == korthikanti(granularity, t, sp)


def _blocks_measured(granularity, method, k, n_layer=4):
    """(activation bytes the blocks hold at the end of forward, recomputed matmul FLOPs) on one rank, bf16."""
    from minidist.autocast import autocast
    cfg = GPTConfig(block_size=S, vocab_size=11, n_layer=n_layer, n_head=A, n_embd=H, dropout=0.1)
    dev = Device("laptop")
    with dev:
        model = GPT(cfg, seed=1).set_recompute(Recompute(granularity, method, k))
        model.set_dropout_key(0, 0)
        with autocast("bf16"):
            x = model.embed(np.random.default_rng(0).integers(0, 11, (B, S)))
            before = dev.memory.current["activations"]
            y = model.blocks(x)
            held = dev.memory.current["activations"] - before
            (y * y).mean().backward()
    recomputed = sum(dev.flops_by_op.get(f"recompute {op}", 0) for op in ("linear", "attention", "matmul"))
    return held, recomputed


@pytest.mark.parametrize("granularity,method,k", [
    ("none", "uniform", 1), ("selective", "uniform", 1), ("full", "uniform", 1), ("full", "uniform", 2),
    ("full", "uniform", 3), ("full", "block", 1), ("full", "block", 3)])
def test_the_estimator_and_the_measured_run_agree_on_activation_bytes_and_recompute_flops(granularity, method, k):
    from minidist.estimate.activations import activation_memory, checkpointed_layers
    from minidist.estimate.flops import training_flops
    L = 4
    held, recomputed = _blocks_measured(granularity, method, k, L)
    est = activation_memory(S, B, H, A, L, checkpointing=granularity, precision_bytes=2, method=method, num_layers=k)
    whole = checkpointed_layers(L, granularity, method, k)[1]
    assert held == est["total"] + whole * engine_extras("none")          # the named extras of whole layers
    D = B * S
    f = training_flops(1.0, D, L, H, S, granularity, recomputed_fraction=(L - whole) / L,
                       block_params=12 * H * H * L)
    assert recomputed == f["recompute_flops"]


@pytest.mark.parametrize("granularity", ["selective", "full"])
def test_report_puts_measured_recompute_flops_beside_the_estimate(tmp_path, granularity):
    import json

    from minidist.train import main as train_main
    cfg = {"model": {"n_layer": 2, "n_embd": 32, "n_head": 4, "block_size": 16}, "data": {"seq_len": 16},
           "steps": 2, "eval_iters": 1, "train_micro_batch_size_per_gpu": 2,
           "activation_checkpointing": {"granularity": granularity}}
    (tmp_path / "c.json").write_text(json.dumps(cfg))
    assert train_main(["--config", str(tmp_path / "c.json"), "--report", str(tmp_path / "r.json"), "--quiet"]) == 0
    r = json.loads((tmp_path / "r.json").read_text())["activation_checkpointing"]
    assert r["granularity"] == granularity
    assert r["measured"]["recompute_flops_per_step"] == r["estimate"]["recompute_flops_per_step_per_rank"] > 0


@pytest.mark.parametrize("extra", [
    {"activation_checkpointing": {"granularity": "full", "cpu_checkpointing": True}},
    {"activation_checkpointing": {"granularity": "selective", "cpu_checkpointing": True}},
    {"activation_checkpointing": {"granularity": "full", "partition_activations": True}, "parallel": {"tensor": 2}},
    {"activation_checkpointing": {"granularity": "full", "partition_activations": True, "cpu_checkpointing": True,
                                  "num_layers": 2}, "parallel": {"tensor": 2, "pipeline": 2, "schedule": "zb_h1"},
     "gradient_accumulation_steps": 4}], ids=["cpu_full", "cpu_selective", "partition_tp2", "partition_cpu_3d"])
def test_deepspeeds_cpu_checkpointing_and_partition_activations_change_no_value(extra):
    world = 1
    for key, size in (("tensor", 2), ("pipeline", 2)):
        world *= size if extra.get("parallel", {}).get(key, 1) > 1 else 1
    plain = {k: v for k, v in extra.items() if k != "activation_checkpointing"}
    a = dist.spawn(train_steps, world, config(**extra), timeout=60)
    b = dist.spawn(train_steps, world, config(**plain), timeout=60)
    for x, y in zip(a, b):
        assert_identical(x, y)


def _checkpoint_bytes(comm, cpu, partition):
    """Device and host activation bytes of 4 full-recomputed layers' checkpoints, and the log."""
    from minidist.parallel.grid import ProcessGrid
    from minidist.parallel.tensor import CheckpointPartition
    grid = ProcessGrid(comm, tp=comm.size)
    held = []
    for n_layer in (4, 2):
        dev = Device("laptop")
        with dev:
            model = _tp_model(grid, n_layer, Recompute("full", cpu=cpu, partition=CheckpointPartition(grid.tp)
                                                       if partition else None))
            ids = np.random.default_rng(0).integers(0, 11, (2, 8))
            mark = comm.log.mark()
            _, loss = model(ids, ids)
            held.append((dev.memory.current["activations"], dev.host.current["activations"]))
            loss.backward()
            gathers = comm.log.since(mark).bytes_sent("all_gather")
            events = {e["name"] for e in dev.trace.events}
    return [(a - b) / 2 for a, b in zip(held[0], held[1])], gathers, events


def test_cpu_checkpointing_moves_2sbh_per_layer_to_the_host_and_partition_keeps_1_over_t():
    s, b, h, w, t = 8, 2, 16, 8, 2
    (device, host), _, events = dist.spawn(_checkpoint_bytes, 1, True, False)[0]
    assert device == 0 and host == w * s * b * h                          # the block input, on the host
    assert {"d2h checkpoint", "h2d checkpoint"} <= events                 # the copies on the timeline
    assert any(name.startswith("recompute ") for name in events)         # and the recomputed forward
    for (device, host), gathers, _ in dist.spawn(_checkpoint_bytes, t, False, True):
        assert device == w * s * b * h / t and host == 0                   # one chunk of each checkpoint
        assert gathers > 0                                                 # gathered back in backward


def test_checkpoint_of_plain_functions_replays_their_dropout_and_passes_other_arguments():
    """A lambda closing over a Dropout module, or over a NumPy Generator it hands F.dropout,
    draws the same mask in the recompute (the gradients are those of the forward's mask);
    arguments that are no arrays (an axis, a probability, a flag, None) pass through as given;
    a function that returns no Tensor is refused by name."""
    from minidist import functional as F
    from minidist.nn import Dropout
    from minidist.recompute import checkpoint
    from minidist.tensor import Tensor

    rng = np.random.default_rng(0)
    xd, wd = rng.standard_normal((4, 6)), rng.standard_normal((6, 6))

    def grads(make_fn, use_checkpoint, *extra):
        x, w = Tensor(xd.copy(), requires_grad=True), Tensor(wd.copy(), requires_grad=True)
        fn = make_fn(w)
        y = checkpoint(fn, x, *extra) if use_checkpoint else fn(x, *extra)
        (y * y).sum().backward()
        return y.data, x.grad, w.grad

    def over_dropout(w):
        drop = Dropout(0.5, seed=3)                  # a fresh stream for each run
        return lambda x: drop(F.linear(x, w))

    def over_generator(w):
        g = np.random.default_rng(5)
        return lambda x: F.dropout(F.linear(x, w), 0.5, rng=g)

    makers = {
        "closure over a Dropout module": over_dropout,
        "closure over a Generator": over_generator,
        "an axis and a flag": lambda w: (lambda x, axis, keep: F.softmax(F.linear(x, w), axis=axis) * (2.0 if keep else 1.0)),
        "None for a bias": lambda w: (lambda x, b: F.linear(x, w, b)),
    }
    extras = {"an axis and a flag": (0, True), "None for a bias": (None,)}
    for name, make in makers.items():
        plain = grads(make, False, *extras.get(name, ()))
        ckpt = grads(make, True, *extras.get(name, ()))
        for a, b in zip(plain, ckpt):
            assert np.array_equal(a, b), name
    with pytest.raises(TypeError, match="fn must return one Tensor, got tuple"):
        x = Tensor(xd, requires_grad=True)
        checkpoint(lambda t: (t * 2.0, t), x)
