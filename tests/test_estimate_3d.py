"""minidist.estimate.grid3d against measured runs: per rank, the model-state bytes at the
optimizer step and the bytes sent in a step equal the prediction exactly — TP × DP (ZeRO-1/2,
with and without sequence parallelism, fp32 and bf16), PP × DP (1f1b, interleaved_1f1b, zb_v)
and plain ZeRO — and each part of the traffic (tensor-parallel collectives, pipeline sends)
equals what the message log says. A 3D layout (dp 2 × tp 2 × pp 2) is checked against numbers derived
by hand here, and against a measured run where the trainer accepts tensor × pipeline."""
import copy
import json

import pytest

from minidist import distributed as dist
from minidist.estimate import model_state_memory
from minidist.estimate.cli import main
from minidist.estimate.grid3d import bucket_sizes, estimate_3d, estimate_for_config
from minidist.parallel.tensor.accounting import tp_bytes_by_op
from minidist.training.trainer import Trainer

pytestmark = [pytest.mark.estimate]

STATES = ("parameters", "gradients", "optimizer_states")


def config(n_layer=2, **extra):
    cfg = {"model": {"n_layer": n_layer, "n_embd": 16, "n_head": 4, "block_size": 8},
           "data": {"dataset": "english", "seq_len": 8}, "steps": 1, "eval_iters": 1,
           "train_micro_batch_size_per_gpu": 2}
    cfg.update(copy.deepcopy(extra))
    return cfg


def one_step(comm, cfg):
    trainer = Trainer(copy.deepcopy(cfg), comm)
    trainer.train_step(0)
    return trainer


def check_measured(world, cfg):
    """Every rank's model states and bytes sent (total, tp group, pipeline sends) = the estimate."""
    trainers = dist.spawn(one_step, world, cfg)
    t0 = trainers[0]
    est = estimate_for_config(t0.cfg, world, t0.model_config.vocab_size)
    for rank, tr in enumerate(trainers):
        pp_rank = tr.grid.coords["pp"] if tr.grid is not None else 0
        want = est["ranks"][pp_rank]
        where = f"rank {rank} (pp {pp_rank})"
        assert {c: tr.strategy.model_states[c] for c in STATES} == \
               {c: want["model_states"][c] for c in STATES}, where
        sent = want["bytes_sent"]
        assert tr.history[-1]["bytes_sent"] == sent["total"], (where, sent, tr.step_log.summary())
        assert tr.step_log.bytes_sent("send") == sent["pipeline"], where
        t, pp = tr.cfg["parallel"]["tensor"], tr.cfg["parallel"]["pipeline"]
        if t > 1:
            # without a pipeline grid.mp is the tp group: the clipping norm's one float64 travels there too
            norm = 2 * (t - 1) * 8 if pp == 1 and tr.cfg["gradient_clipping"] > 0 else 0
            assert sum(tp_bytes_by_op(tr).values()) == sent["tensor_parallel"] + norm, where
    return trainers, est


# ---------------------------------------------------------------- measured: TP × DP
@pytest.mark.timeout(120)
@pytest.mark.parametrize("stage,sp,precision,accumulation", [
    (1, False, "fp32", 1), (2, True, "fp32", 2), (1, True, "bf16", 1), (2, False, "bf16", 2), (0, False, "fp32", 1)])
def test_tp_x_dp_measured_equals_estimate(stage, sp, precision, accumulation):
    extra = {"parallel": {"tensor": 2, "sequence_parallel": sp}, "zero_optimization": {"stage": stage},
             "gradient_accumulation_steps": accumulation}
    if precision == "bf16":
        extra["bf16"] = {"enabled": True}
    check_measured(4, config(**extra))


@pytest.mark.timeout(120)
def test_tp_x_dp_vocabulary_padding_small_buckets_and_clipping():
    """Megatron's padded vocabulary, ZeRO-2 buckets of ≤ 300 elements (each padded to a multiple
    of dp), the gradient norm over the tp group and over dp: still exact; the buckets are the
    strategy's own."""
    cfg = config(parallel={"tensor": 2, "make_vocab_size_divisible_by": 8}, gradient_clipping=1.0,
                 zero_optimization={"stage": 2, "reduce_bucket_size": 300}, bf16={"enabled": True})
    trainers, est = check_measured(4, cfg)
    numels = [p.size for p in trainers[0].strategy.params]
    assert bucket_sizes(numels, 300) == [b.numel for b in trainers[0].strategy.buckets]
    assert len(bucket_sizes(numels, 300)) > 1
    assert est["ranks"][0]["shard"] == trainers[0].strategy.shard


# ---------------------------------------------------------------- measured: PP × DP
@pytest.mark.timeout(120)
@pytest.mark.parametrize("schedule,v,stage,precision", [
    ("1f1b", 1, 0, "fp32"), ("interleaved_1f1b", 2, 1, "fp32"), ("zb_v", 1, 2, "fp32"), ("1f1b", 1, 2, "bf16")])
def test_pp_x_dp_measured_equals_estimate(schedule, v, stage, precision):
    extra = {"parallel": {"pipeline": 2, "schedule": schedule, "virtual_stages": v},
             "zero_optimization": {"stage": stage}, "gradient_accumulation_steps": 4}
    if precision == "bf16":
        extra.update(bf16={"enabled": True}, gradient_clipping=1.0)
    _, est = check_measured(4, config(n_layer=4, **extra))
    ranks = est["ranks"]
    # the V holds both ends on rank 0: one wte, no tied all-reduce; the others pay it on both end ranks
    tied = [r["bytes_sent"]["tied_embedding"] for r in ranks]
    assert (tied == [0, 0]) == (schedule == "zb_v") and len(set(tied)) == 1
    assert ranks[0]["chunks"] == {"1f1b": [0], "interleaved_1f1b": [0, 2], "zb_v": [0, 3]}[schedule]


# ---------------------------------------------------------------- measured: plain ZeRO
@pytest.mark.timeout(120)
@pytest.mark.parametrize("world,extra", [
    (3, {"zero_optimization": {"stage": 1, "reduce_bucket_size": 300}, "gradient_clipping": 1.0}),
    (4, {"zero_optimization": {"stage": 2}, "gradient_accumulation_steps": 3, "bf16": {"enabled": True}}),
    (2, {"zero_optimization": {"stage": 0}, "optimizer": {"type": "SGD"}})])
def test_plain_zero_measured_equals_estimate(world, extra):
    check_measured(world, config(**extra))


# ---------------------------------------------------------------- measured: 3D
@pytest.mark.timeout(120)
@pytest.mark.parametrize("extra", [
    {"parallel": {"tensor": 2, "pipeline": 2}, "zero_optimization": {"stage": 1}},
    {"parallel": {"tensor": 2, "pipeline": 2, "sequence_parallel": True, "schedule": "zb_v"},
     "zero_optimization": {"stage": 2}, "bf16": {"enabled": True}}])
def test_3d_measured_equals_estimate(extra):
    check_measured(8, config(n_layer=4, gradient_accumulation_steps=4, **extra))


# ---------------------------------------------------------------- 3D, by hand
def test_3d_dp2_tp2_pp2_by_hand():
    """L=2, h=16, V=65 (padded to 66: 33 rows per tp rank), T=s=8, b=2, m=4, 1f1b, fp32, ZeRO-1."""
    r0, r1 = estimate_3d(2, 16, 4, 65, 8, 8, 2, 4, dp=2, tp=2, pp=2, zero_stage=1)["ranks"]
    block = 12 * 16 ** 2 // 2 + 7 * 16 // 2 + 6 * 16            # 1688: 12h²/t + 7h/t + 6h
    assert r0["params"] == 33 * 16 + 8 * 16 + block              # wte shard, wpe, block 0
    assert r1["params"] == 33 * 16 + block + 2 * 16              # tied head, block 1, ln_f
    for r in (r0, r1):
        s = -(-r["params"] // 2)                                 # one bucket over dp = 2
        assert r["model_states"] == {"parameters": 4 * r["params"], "gradients": 4 * r["params"],
                                     "optimizer_states": 8 * s, "total": 8 * r["params"] + 8 * s}
    ar = lambda n: 2 * (2 - 1) * -(-n // 2) * 4                  # ring all-reduce over 2, fp32
    bsh, bs = 2 * 8 * 16, 2 * 8
    assert r0["bytes_sent"] == {
        "tensor_parallel": 4 * (4 * ar(bsh) + ar(bsh)),          # block: g, g, f, f; embedding g
        "pipeline": 4 * bsh * 4,                                  # activation out, per micro-batch
        "tied_embedding": ar(33 * 16),
        "data_parallel": 2 * (2 - 1) * 1172 * 4,                 # reduce-scatter + all-gather
        "scalars": 0, "total": 20480 + 4096 + 2112 + 9376}
    assert r1["bytes_sent"]["tensor_parallel"] == 4 * (5 * ar(bsh) + 3 * ar(bs))   # + LM head f, loss
    assert r1["bytes_sent"]["total"] == 21248 + 4096 + 2112 + 2 * 1124 * 4


def test_3d_sequence_parallel_bf16_v_schedule_by_hand():
    """zb_v on 2 ranks: chunks [0, 3] and [1, 2]; bf16 (2-byte wire, 12-byte optimizer state);
    ZeRO-2; the stage messages are b·(s/t)·h; no tied all-reduce; the overflow flag over all 8."""
    r0, r1 = estimate_3d(4, 16, 4, 65, 8, 8, 2, 4, dp=2, tp=2, pp=2, sp=True, zero_stage=2,
                         precision="bf16", schedule="zb_v")["ranks"]
    block = 1688
    assert (r0["chunks"], r1["chunks"]) == ([0, 3], [1, 2])
    assert (r0["params"], r1["params"]) == (33 * 16 + 8 * 16 + 2 * block + 32, 2 * block)
    s0 = r0["params"] // 2
    assert r0["model_states"] == {"parameters": 2 * r0["params"], "gradients": 2 * s0,
                                  "optimizer_states": 12 * s0, "total": 2 * r0["params"] + 14 * s0}
    c = 1 * 128 * 2                                   # all-gather / reduce-scatter of b·s·h = 256 over 2
    ar = lambda n, w: 2 * -(-n // 2) * w
    per_block = 10 * c + 6 * ar(16, 2)                # 10 sequence collectives + 6 replicated-grad all-reduces
    first = ar(256, 2) + c                            # wte g, scatter's backward all-gather
    last = 3 * c + 2 * ar(16, 2) + 3 * ar(16, 4)     # LM head AG, RS, AG again; ln_f grads; loss (fp32)
    assert r0["bytes_sent"] == {"tensor_parallel": 4 * (2 * per_block + first + last),
                                "pipeline": 2 * 4 * (2 * 4 * 16) * 2, "tied_embedding": 0,
                                "data_parallel": 2 * s0 * 2, "scalars": 2 * 7 * 8,
                                "total": r0["bytes_sent"]["total"]}
    assert r1["bytes_sent"]["tensor_parallel"] == 4 * 2 * per_block
    assert sum(v for k, v in r0["bytes_sent"].items() if k != "total") == r0["bytes_sent"]["total"]


def test_without_padding_agrees_with_the_zero_paper_formula():
    """dp dividing the shard: the per-rank figures are model_state_memory's Ψ/N to the byte."""
    for stage in (0, 1, 2):
        r = estimate_3d(2, 16, 4, 64, 8, 8, dp=4, zero_stage=stage, precision="fp16")["ranks"][0]
        f = model_state_memory(r["params"], dp=4, stage=stage, precision="fp16")
        assert r["params"] % 4 == 0
        assert {c: r["model_states"][c] for c in STATES} == {c: f[c] for c in STATES}


def test_bad_layouts_are_refused():
    with pytest.raises(ValueError, match="divisible by tp"):
        estimate_3d(2, 16, 6, 65, 8, 8, tp=4)
    with pytest.raises(ValueError, match="pipeline chunks"):
        estimate_3d(2, 16, 4, 65, 8, 8, pp=2, micro_batches=4, schedule="zb_v")
    with pytest.raises(ValueError, match="sequence"):
        estimate_3d(2, 16, 4, 65, 8, 6, tp=4, sp=True)


# ---------------------------------------------------------------- command line
def test_cli_prints_and_json_carries_the_per_rank_table(capsys):
    argv = ["--layers", "2", "--hidden", "16", "--heads", "4", "--seq", "8", "--vocab", "65", "--micro-batch", "2",
            "--dp", "2", "--tp", "2", "--pp", "2", "--zero", "1", "--precision", "fp32", "--micro-batches", "4"]
    assert main(argv + ["--json"]) == 0
    r = json.loads(capsys.readouterr().out)
    want = estimate_3d(2, 16, 4, 65, 8, 8, 2, 4, dp=2, tp=2, pp=2, zero_stage=1)
    assert [x["bytes_sent"] for x in r["per_pipeline_rank"][0]["ranks"]] == [x["bytes_sent"] for x in want["ranks"]]
    assert main(argv) == 0
    text = capsys.readouterr().out
    assert "Per pipeline rank" in text and "36.1 kB" in text and "36.4 kB" in text   # totals sent


@pytest.mark.parametrize("stage", [2, 3])
def test_the_zero_traffic_row_counts_one_reduce_scatter_per_step_under_a_pipeline(stage, capsys):
    """Under a pipeline the data-parallel reduction waits for the flush: ZeRO-2 sends r·Ψ/pp
    twice a step (reduce-scatter, all-gather), ZeRO-3 r·Ψ/pp·(2m + 1) (a gather per micro-batch's
    forward and backward, one reduce-scatter), r = (d−1)/d — as the per-pipeline-rank table counts
    (its stages hold the tied embedding twice, so it is compared per parameter), not per micro-batch."""
    from minidist.estimate.comm import comm_volume
    psi, d, m = 8000.0, 2, 4
    r = (d - 1) / d
    flat = comm_volume(psi, dp=d, stage=stage, precision="fp16", pp=1, micro_batches=m)["dp_elements"]
    piped = comm_volume(psi, dp=d, stage=stage, precision="fp16", pp=2, micro_batches=m)["dp_elements"]
    assert flat == (r * psi * (m + 1) if stage == 2 else 3 * r * psi * m)
    assert piped == (2 * r * psi / 2 if stage == 2 else r * psi / 2 * (2 * m + 1))
    argv = ["--layers", "2", "--hidden", "16", "--heads", "2", "--seq", "16", "--vocab", "75", "--dp", "2",
            "--pp", "2", "--precision", "fp16", "--zero", str(stage), "--micro-batch", "2", "--micro-batches", "4",
            "--json"]
    assert main(argv) == 0
    out = json.loads(capsys.readouterr().out)
    top = out["comm"][0]["dp_bytes"] / (out["params"] / 2)                       # bytes per parameter of a stage
    table = [x["bytes_sent"]["data_parallel"] / x["params"] for x in out["per_pipeline_rank"][0]["ranks"]]
    assert top == pytest.approx(2 * r * 2 if stage == 2 else r * (2 * m + 1) * 2)
    assert len(table) == 2 and all(t == pytest.approx(top, rel=0.05) for t in table), (table, top)


def test_params_given_beside_a_shape_are_named_as_given(capsys):
    argv = ["--params", "1.3B", "--dp", "8", "--zero", "1", "--layers", "24", "--hidden", "2048", "--heads", "16",
            "--seq", "1024", "--vocab", "50257"]
    assert main(argv) == 0
    text = capsys.readouterr().out
    assert "(parameters from --params = 1,300,000,000; the model shape's GPT-2 count" in text
    assert "= 1,313,626,112 sizes the per-pipeline-rank table)" in text
