"""Measured per-rank model-state memory and bytes moved per step, against the ZeRO formulas
(minidist.estimate) and against the exact padded expectation of each strategy."""
import pytest

from minidist import distributed as dist
from minidist.estimate import comm_volume, model_state_memory
from minidist.testing import max_abs_diff, train_steps

pytestmark = pytest.mark.zero


def config(stage=0, optimizer="Adam", accumulation=1, n_layer=2, **zero):
    return {"model": {"n_layer": n_layer, "n_embd": 8, "n_head": 2, "block_size": 8},
            "data": {"dataset": "copy", "n_digits": 3, "seq_len": 7}, "dtype": "float32",
            "train_micro_batch_size_per_gpu": 2, "gradient_accumulation_steps": accumulation, "steps": 1,
            "optimizer": {"type": optimizer, "params": {"momentum": 0.9} if optimizer == "SGD" else {}},
            "zero_optimization": {"stage": stage, **zero}}


CASES = [(0, {}), (1, {}), (2, {}), (3, {}), (2, {"offload_optimizer": {"device": "cpu"}}),
         (3, {"offload_optimizer": {"device": "cpu"}})]


@pytest.mark.parametrize("optimizer", ["Adam", "SGD"])
@pytest.mark.parametrize("stage,zero", CASES)
def test_model_states_equal_zero_formula(stage, zero, optimizer):
    """p = 4 divides Ψ and there is one bucket: no padding, the formula holds exactly."""
    runs = dist.spawn(train_steps, 4, config(stage, optimizer, **zero), 1)
    psi = runs[0]["n_params"]
    assert psi % 4 == 0
    offload = bool(zero)
    f = model_state_memory(psi, dp=4, stage=stage, precision="fp32", optimizer=optimizer.lower(), offload=offload)
    for r in runs:
        m = r["model_states"]
        for cat in ("parameters", "gradients", "optimizer_states"):
            assert m[cat] == f[cat], (cat, m, f)
        assert m["host"] == f["host"]


@pytest.mark.parametrize("world_size", [3, 5])
@pytest.mark.parametrize("stage", [1, 2, 3])
def test_model_states_with_padding(stage, world_size):
    """Ψ not divisible by p, several buckets: each bucket is padded to p·ceil(n_b/p)."""
    runs = dist.spawn(train_steps, world_size, config(stage, reduce_bucket_size=300), 1)
    r = runs[0]
    psi, shard = r["n_params"], r["shard"]
    assert shard > psi / world_size                       # there is padding in this case
    assert shard * world_size - psi < world_size * 12     # at most p-1 elements per bucket
    assert r["model_states"]["optimizer_states"] == 8 * shard            # Adam, fp32: K = 8
    assert {k: r["model_states"][k] for k in r["expected_model_states"]} == r["expected_model_states"]
    f = model_state_memory(psi, dp=world_size, stage=stage, precision="fp32")
    assert f["total"] <= r["model_states"]["total"] <= f["total"] * 1.05


def test_zero2_frees_bucket_gradients_and_zero3_gathers_per_layer():
    """The memory timeline: ZeRO-2 never holds all gradients; ZeRO-3 never all parameters."""
    z1, z2, z3 = (dist.spawn(train_steps, 4, config(s, n_layer=4, reduce_bucket_size=400, overlap_comm=True,
                                                    stage3_prefetch_bucket_size=1), 1)[0]      # one unit ahead
                  for s in (1, 2, 3))
    full = 4 * z1["n_params"]

    def most(run, cat):
        """The most bytes of ``cat`` held during training (after ZeRO-3 has partitioned)."""
        t = run["trainer"].device.memory
        start = getattr(run["trainer"].strategy, "partitioned_at", 0)
        level, peak = 0, 0
        for i, (_, c, delta, _) in enumerate(t.timeline):
            if c == cat:
                level += delta
                if i >= start:
                    peak = max(peak, level)
        return peak

    assert most(z1, "gradients") == full
    assert most(z2, "gradients") < 0.6 * full
    assert most(z3, "parameters") < 0.85 * full         # shards + a few gathered units
    assert z3["model_states"]["parameters"] == 4 * z3["shard"]


@pytest.mark.parametrize("stage,factor", [(0, 2), (1, 2), (2, 2), (3, 3)])
def test_bytes_per_step_match_textbook(stage, factor):
    """DDP, ZeRO-1, ZeRO-2: 2(p−1)/p·Ψ elements per rank per step; ZeRO-3: 3(p−1)/p·Ψ."""
    runs = dist.spawn(train_steps, 4, config(stage), 1)
    psi = runs[0]["n_params"]
    expect = factor * 3 / 4 * psi * 4
    est = comm_volume(psi, dp=4, stage=stage, precision="fp32")["dp_bytes"]
    for r in runs:
        assert r["history"][0]["bytes_sent"] == expect == est
    ring = runs[1]["trainer"].comm.log.messages()
    assert {e.peer for e in ring} == {2}                  # rank 1 only ever sends to its right neighbour


@pytest.mark.parametrize("stage", [0, 1, 2, 3])
def test_bytes_with_padding_and_accumulation(stage):
    runs = dist.spawn(train_steps, 3, config(stage, accumulation=2, reduce_bucket_size=300), 1)
    r = runs[2]
    psi = r["n_params"]
    assert r["history"][0]["bytes_sent"] == r["expected_bytes_sent"]
    est = comm_volume(psi, dp=3, stage=stage, precision="fp32", micro_batches=2)["dp_bytes"]
    assert est <= r["expected_bytes_sent"] <= est * 1.05


def test_parameter_server_traffic_concentrates_on_root():
    runs = dist.spawn(train_steps, 4, {**config(0), "parallel": {"data_parallel": "parameter_server"}}, 1)
    psi_bytes = 4 * runs[0]["n_params"]
    assert runs[0]["history"][0]["bytes_sent"] == 3 * psi_bytes
    assert [r["history"][0]["bytes_sent"] for r in runs[1:]] == [psi_bytes] * 3
    assert runs[0]["model_states"]["optimizer_states"] == 2 * psi_bytes and runs[1]["model_states"]["optimizer_states"] == 0


def _most_parameters(run) -> int:
    """The most "parameters" bytes held after ZeRO-3 partitioned the model."""
    t = run["trainer"].device.memory
    level, peak = 0, 0
    for i, (_, c, delta, _) in enumerate(t.timeline):
        if c == "parameters":
            level += delta
            if i >= run["trainer"].strategy.partitioned_at:
                peak = max(peak, level)
    return peak


def test_zero3_prefetch_budget_follows_deepspeed():
    """stage3_prefetch_bucket_size is a budget in elements per hook, stage3_max_live_parameters
    a cap on what is held: the peak of gathered parameters grows with the budget exactly by
    whole units, the step gets no slower, and the weights do not change."""
    def run(**zero):
        return dist.spawn(train_steps, 4, config(3, n_layer=4, **zero), 1)[0]
    runs = {"off": run(stage3_prefetch_bucket_size=0), "one": run(stage3_prefetch_bucket_size=1),
            "all": run(stage3_prefetch_bucket_size=10**9)}
    s = runs["off"]["trainer"].strategy
    root, block = s.buckets[0].padded * 4, s.buckets[1].padded * 4          # bytes of a gathered unit
    shards = 4 * s.shard
    runs["capped"] = run(stage3_prefetch_bucket_size=10**9,
                         stage3_max_live_parameters=s.buckets[0].numel + 2 * s.buckets[1].numel)
    assert _most_parameters(runs["off"]) == shards + root + block            # the unit running, and the root
    assert _most_parameters(runs["one"]) == shards + root + 2 * block        # ... and the next one
    assert _most_parameters(runs["all"]) == shards + root + 4 * block        # everything, fetched at once
    assert _most_parameters(runs["capped"]) == shards + root + 2 * block     # the cap holds it back
    t = {k: r["history"][0]["sim_time"] for k, r in runs.items()}
    assert t["all"] <= t["one"] < t["off"]
    for r in runs.values():
        assert max_abs_diff(r["params"][0], runs["off"]["params"][0]) == 0.0
        assert r["history"][0]["bytes_sent"] == runs["off"]["history"][0]["bytes_sent"]
