"""Measured per-rank model-state memory and bytes moved per step, against the ZeRO formulas
written out in tests/_formulas.py (padding included), and the estimator against the same."""
import pytest
from _formulas import bytes_sent, chunk, gpt_units, model_states, shard

from minidist import distributed as dist
from minidist.estimate import comm_volume, model_state_memory
from minidist.testing import max_abs_diff, train_steps

pytestmark = [pytest.mark.zero, pytest.mark.timeout(120)]


def config(stage=0, optimizer="Adam", accumulation=1, n_layer=2, **zero):
    return {"model": {"n_layer": n_layer, "n_embd": 8, "n_head": 2, "block_size": 8},
            "data": {"dataset": "copy", "n_digits": 3, "seq_len": 7}, "dtype": "float32",
            "train_micro_batch_size_per_gpu": 2, "gradient_accumulation_steps": accumulation, "steps": 1,
            "optimizer": {"type": optimizer, "params": {"momentum": 0.9} if optimizer == "SGD" else {}},
            "zero_optimization": {"stage": stage, **zero}}


K_FP32 = {"Adam": 8, "SGD": 4}       # fp32 training: Adam's m and v; SGD's momentum buffer (no master copy)


def bucket_sizes(run, stage):
    """The elements of every flat buffer the strategy communicates: ZeRO-3's units (root,
    then each block) counted from nanoGPT's shapes; the other stages' buckets as the
    strategy grouped them (their *padding* is what the formulas check)."""
    trainer = run["trainer"]
    if stage == 3:
        sizes = gpt_units(trainer.cfg["model"], trainer.dataset.vocab_size)
    else:
        sizes = [b.numel for b in trainer.strategy.buckets]
    assert sum(sizes) == run["n_params"]
    return sizes


CASES = [(0, {}), (1, {}), (2, {}), (3, {}), (2, {"offload_optimizer": {"device": "cpu"}}),
         (3, {"offload_optimizer": {"device": "cpu"}})]


@pytest.mark.parametrize("optimizer", ["Adam", "SGD"])
@pytest.mark.parametrize("stage,zero", CASES)
def test_model_states_equal_zero_formula(stage, zero, optimizer):
    """p = 4 divides every bucket: S = Ψ/4 exactly, and the paper's formulas hold to the byte."""
    runs = dist.spawn(train_steps, 4, config(stage, optimizer, **zero), 1)
    psi = runs[0]["n_params"]
    s = shard(bucket_sizes(runs[0], stage), 4)
    assert 4 * s == psi                                        # no padding in this case
    offload = bool(zero)
    k = K_FP32[optimizer]
    want = model_states(stage, psi, s, w=4, k=k, offload=offload, moments=k)
    if stage == 3:                                             # (w + w + K)·Ψ/N
        assert sum(want[c] for c in ("parameters", "gradients", "optimizer_states")) == \
               (4 + 4 + (0 if offload else k)) * psi // 4
    for r in runs:
        assert {c: r["model_states"][c] for c in want} == want
    f = model_state_memory(psi, dp=4, stage=stage, precision="fp32", optimizer=optimizer.lower(), offload=offload)
    assert {c: f[c] for c in want} == want                     # the estimator says the same


@pytest.mark.parametrize("world_size", [3, 5])
@pytest.mark.parametrize("stage", [1, 2, 3])
def test_model_states_with_padding(stage, world_size):
    """Ψ not divisible by p, several buckets: each bucket is padded to p·ceil(n_b/p)."""
    runs = dist.spawn(train_steps, world_size, config(stage, reduce_bucket_size=300), 1)
    psi = runs[0]["n_params"]
    sizes = bucket_sizes(runs[0], stage)
    s = shard(sizes, world_size)
    assert s > psi / world_size and s * world_size - psi <= (world_size - 1) * len(sizes)   # some padding
    want = model_states(stage, psi, s, w=4, k=8)
    for r in runs:
        assert {c: r["model_states"][c] for c in want} == want
    f = model_state_memory(psi, dp=world_size, stage=stage, precision="fp32")
    assert f["total"] <= sum(want[c] for c in ("parameters", "gradients", "optimizer_states")) <= f["total"] * 1.05


def most(run, cat) -> int:
    """The most bytes of ``cat`` held during the step (for ZeRO-3: after it partitioned the model)."""
    t = run["trainer"].device.memory
    start = getattr(run["trainer"].strategy, "partitioned_at", 0)
    level, peak = 0, 0
    for i, (_, c, delta, _) in enumerate(t.timeline):
        if c == cat:
            level += delta
            if i >= start:
                peak = max(peak, level)
    return peak


def gathered_bytes(run):
    """(root, block): bytes of one gathered ZeRO-3 unit, p·ceil(n/p) fp32 elements."""
    units = bucket_sizes(run, 3)
    return 4 * 4 * chunk(units[0], 4), 4 * 4 * chunk(units[1], 4)


def test_zero2_frees_bucket_gradients_and_zero3_gathers_per_layer():
    """The memory timeline: ZeRO-2 never holds all gradients; ZeRO-3 holds its shards, the
    root unit, the block running and (prefetch) the next one — never all parameters."""
    z1, z2, z3 = (dist.spawn(train_steps, 4, config(s, n_layer=4, reduce_bucket_size=400, overlap_comm=True,
                                                    stage3_prefetch_bucket_size=1), 1)[0]      # one unit ahead
                  for s in (1, 2, 3))
    full = 4 * z1["n_params"]
    assert most(z1, "gradients") == full
    assert most(z2, "gradients") < 0.6 * full
    shards = 4 * shard(bucket_sizes(z3, 3), 4)
    root, block = gathered_bytes(z3)
    assert most(z3, "parameters") == shards + root + 2 * block < 0.85 * full
    assert z3["model_states"]["parameters"] == shards


@pytest.mark.parametrize("stage", [0, 1, 2, 3])
def test_bytes_per_step_match_textbook(stage):
    """DDP, ZeRO-1, ZeRO-2: 2(p−1)/p·Ψ·4 bytes per rank per step; ZeRO-3: 3(p−1)/p·Ψ·4, 1.5× DDP."""
    runs = dist.spawn(train_steps, 4, config(stage), 1)
    psi = runs[0]["n_params"]
    want = bytes_sent(stage, 4, 4, shard(bucket_sizes(runs[0], stage), 4))
    ddp = 2 * 3 / 4 * psi * 4                                  # ring all-reduce of Ψ fp32 values
    assert want == (1.5 * ddp if stage == 3 else ddp)
    for r in runs:
        assert r["history"][0]["bytes_sent"] == want
    assert comm_volume(psi, dp=4, stage=stage, precision="fp32")["dp_bytes"] == want
    ring = runs[1]["trainer"].comm.log.messages()
    assert {e.peer for e in ring} == {2}                  # rank 1 only ever sends to its right neighbour


@pytest.mark.parametrize("stage", [0, 1, 2, 3])
def test_bytes_with_padding_and_accumulation(stage):
    """p = 3, buckets of ≤ 300 elements, 2 micro-batches: DDP and ZeRO-1 communicate once per
    step (no_sync before), ZeRO-2 reduce-scatters every micro-batch, ZeRO-3 gathers twice
    and reduce-scatters every micro-batch; every bucket padded to 3·ceil(n_b/3)."""
    runs = dist.spawn(train_steps, 3, config(stage, accumulation=2, reduce_bucket_size=300), 1)
    psi = runs[0]["n_params"]
    sizes = bucket_sizes(runs[0], stage)
    want = bytes_sent(stage, 3, 4, shard(sizes, 3), micro_batches=2)
    for r in runs:
        assert r["history"][0]["bytes_sent"] == want
    est = comm_volume(psi, dp=3, stage=stage, precision="fp32", micro_batches=2)["dp_bytes"]
    assert est < want <= est * 1.05                       # the estimator ignores the padding


def test_parameter_server_traffic_concentrates_on_root():
    runs = dist.spawn(train_steps, 4, {**config(0), "parallel": {"data_parallel": "parameter_server"}}, 1)
    psi_bytes = 4 * runs[0]["n_params"]
    assert runs[0]["history"][0]["bytes_sent"] == 3 * psi_bytes
    assert [r["history"][0]["bytes_sent"] for r in runs[1:]] == [psi_bytes] * 3
    assert runs[0]["model_states"]["optimizer_states"] == 2 * psi_bytes and runs[1]["model_states"]["optimizer_states"] == 0


def test_zero3_prefetch_budget_follows_deepspeed():
    """stage3_prefetch_bucket_size is a budget in elements per hook, stage3_max_live_parameters
    a cap on what is held: the peak of gathered parameters grows with the budget exactly by
    whole units, the step gets no slower, and the weights do not change."""
    def run(**zero):
        return dist.spawn(train_steps, 4, config(3, n_layer=4, **zero), 1)[0]
    runs = {"off": run(stage3_prefetch_bucket_size=0), "one": run(stage3_prefetch_bucket_size=1),
            "all": run(stage3_prefetch_bucket_size=10**9)}
    units = bucket_sizes(runs["off"], 3)
    root, block = gathered_bytes(runs["off"])                                # bytes of a gathered unit
    shards = 4 * shard(units, 4)
    runs["capped"] = run(stage3_prefetch_bucket_size=10**9, stage3_max_live_parameters=units[0] + 2 * units[1])
    assert most(runs["off"], "parameters") == shards + root + block            # the unit running, and the root
    assert most(runs["one"], "parameters") == shards + root + 2 * block        # ... and the next one
    assert most(runs["all"], "parameters") == shards + root + 4 * block        # everything, fetched at once
    assert most(runs["capped"], "parameters") == shards + root + 2 * block     # the cap holds it back
    t = {k: r["history"][0]["sim_time"] for k, r in runs.items()}
    assert t["all"] <= t["one"] < t["off"]
    for r in runs.values():
        assert max_abs_diff(r["params"][0], runs["off"]["params"][0]) == 0.0
        assert r["history"][0]["bytes_sent"] == runs["off"]["history"][0]["bytes_sent"]


@pytest.mark.parametrize("stage", [1, 2, 3])
@pytest.mark.parametrize("world,tp", [(1, 1), (2, 2)], ids=["one-rank", "tp2-dp1"])
def test_offload_on_one_data_parallel_rank_moves_the_optimizer_to_the_host(stage, world, tp):
    """DeepSpeed's single-GPU ZeRO-Offload: with one data-parallel rank (one rank, or TP2 on 2
    ranks) the optimizer's states and step still go to the host, as the formulas say
    (optimizer 0 B on the device, K·Ψ on the host), with the same arithmetic as without."""
    cfg = config(stage, offload_optimizer={"device": "cpu"})
    cfg["parallel"] = {"tensor": tp}
    plain = config(0)
    plain["parallel"] = {"tensor": tp}
    if world == 1:
        runs, refs = [train_steps(cfg, None, 2)], [train_steps(plain, None, 2)]
    else:
        runs, refs = dist.spawn(train_steps, world, cfg, 2), dist.spawn(train_steps, world, plain, 2)
    for run, ref in zip(runs, refs):
        assert run["strategy"] == f"zero{stage}"
        assert run["model_states"]["optimizer_states"] == 0
        want = run["expected_model_states"]
        assert {c: run["model_states"][c] for c in want} == want
        assert sum(run["host"].values()) > 0 and sum(ref["host"].values()) == 0
        for got, want in zip(run["params"], ref["params"]):
            assert max_abs_diff(got, want) <= 1e-6
