"""ZeRO-3 over the data-parallel group of every pipeline stage (DP 2 × PP 2 on 4 ranks): each
stage's parameters partitioned over its dp ranks, gathered for every micro-batch's forward and
backward, released after; gradients reduce-scattered once per step, after the flush.

* float64: the same weights as one rank on the same global batch after every step (relative
  ≤ 1e-9), under every schedule of the pipeline package, with clipping — the tied embedding's
  two copies summed;
* memory and traffic against the formulas, on every rank: model states (w + w + K)·S at the
  step; bytes on ``grid.dp`` (dp−1)·(2·m·G + S)·w, i.e. 2·m all-gathers of every unit a rank's
  chunks run and one reduce-scatter (m = 2 and 4, so that a wrong factor of m fails); the
  estimator's per-rank rows (and ``python -m minidist.estimate --pp 2 --dp 2 --zero 3``) and the
  report's layout rows equal the measured totals;
* checkpoints: resume bit for bit, reshard to one rank within 1e-12;
* ``mpirun -n 4`` saves the same checkpoint as the in-process ranks."""
import copy
import json

import numpy as np
import pytest
from _mpi import run_mpi

from _checkpoint import assert_same_state, train
from minidist import distributed as dist
from minidist.checkpoint import read_checkpoint
from minidist.defaults import SCHEDULES
from minidist.estimate.cli import main as estimate_main
from minidist.estimate.grid3d import estimate_3d, estimate_for_config
from minidist.testing import train_steps

pytestmark = [pytest.mark.zero, pytest.mark.pipeline, pytest.mark.timeout(120)]

GLOBAL_MICRO = 4
MODEL = {"n_layer": 4, "n_embd": 8, "n_head": 2, "block_size": 8, "dropout": 0.1}
BASE = {"model": MODEL, "data": {"dataset": "english", "seq_len": 8}, "dtype": "float64", "steps": 2,
        "eval_iters": 1, "optimizer": {"type": "AdamW", "params": {"lr": 1e-2}}, "gradient_clipping": 0.05}


def config(schedule="1f1b", m=2, **extra):
    par = {"pipeline": 2, "schedule": schedule, "virtual_stages": 2 if schedule == "interleaved_1f1b" else 1}
    return {**copy.deepcopy(BASE), "parallel": par, "zero_optimization": {"stage": 3},
            "gradient_accumulation_steps": m, "train_micro_batch_size_per_gpu": GLOBAL_MICRO // 2, **extra}


_REFERENCE = {}


def reference(m):
    if m not in _REFERENCE:
        _REFERENCE[m] = train_steps({**copy.deepcopy(BASE), "gradient_accumulation_steps": m,
                                     "train_micro_batch_size_per_gpu": GLOBAL_MICRO})
    return _REFERENCE[m]


def dp_bytes(trainer) -> int:
    """What this rank sent on grid.dp in the last step: the all-gathers and reduce-scatters."""
    group = trainer.strategy.comm.group
    return sum(c.bytes_sent for c in trainer.step_log.collectives
               if c.group == group and c.op in ("all_gather", "reduce_scatter"))


@pytest.mark.parametrize("schedule,m", [(s, 4 if s in ("1f1b", "dualpipe_v") else 2) for s in SCHEDULES])
def test_every_schedule_equals_one_rank_and_the_formulas(schedule, m):
    runs = dist.spawn(train_steps, 4, config(schedule, m), timeout=60)
    ref = reference(m)
    t0 = runs[0]["trainer"]
    est = estimate_for_config(t0.cfg, 4, t0.model_config.vocab_size)
    for r in runs:
        tr = r["trainer"]
        for step, params in enumerate(r["params"]):
            want = ref["params"][step]
            rel = max(float(np.max(np.abs(params[k] - want[k])) / np.max(np.abs(want[k]))) for k in want)
            assert rel <= 1e-9, (schedule, step, tr.rank, rel)
        s = tr.strategy
        G, S, w = s.gathered_per_micro_batch(), s.shard, 8
        assert dp_bytes(tr) == (2 - 1) * (2 * m * G + S) * w == r["expected_bytes_sent"] - s.scalar_bytes()
        gathers = [c for c in tr.step_log.collectives if c.group == s.comm.group and c.op == "all_gather"]
        per_pass = sum(len(units) for units in s.chunk_units.values())
        assert len(gathers) == 2 * m * per_pass                     # every unit, every forward and backward
        e = est["ranks"][tr.grid.coords["pp"]]
        assert r["model_states"]["parameters"] == r["model_states"]["gradients"] == w * S
        assert {k: r["model_states"][k] for k in r["expected_model_states"]} == r["expected_model_states"]
        assert {k: r["model_states"][k] for k in ("parameters", "gradients", "optimizer_states")} == \
            {k: e["model_states"][k] for k in ("parameters", "gradients", "optimizer_states")}
        assert tr.history[-1]["bytes_sent"] == e["bytes_sent"]["total"], (schedule, tr.rank)
        assert dp_bytes(tr) == e["bytes_sent"]["data_parallel"] and e["shard"] == S
    # the V schedules hold both ends on rank 0: the root is gathered by two chunks per pass
    v = schedule in ("zb_v", "dualpipe_v")
    assert (est["ranks"][0]["bytes_sent"]["data_parallel"] > est["ranks"][1]["bytes_sent"]["data_parallel"] * 1.2) == v


@pytest.mark.checkpoint
def test_checkpoint_resumes_bit_for_bit_and_reshards_to_one_rank(tmp_path):
    cfg = config("zb_h1", 2, steps=3)
    straight = train(cfg, 4, save=tmp_path / "a", interval=2)
    resumed = train(cfg, 4, save=tmp_path / "b", load=tmp_path / "a" / "step_00000002")
    assert [[h["loss"] for h in t.history] for t in resumed] == [[h["loss"] for h in t.history] for t in straight]
    assert_same_state(tmp_path / "a", tmp_path / "b")
    for a, b in zip(straight, resumed):                        # each rank's shards, bit for bit
        assert all(np.array_equal(a.strategy.param_shards[k], b.strategy.param_shards[k])
                   for k in a.strategy.param_shards)
    one = {**copy.deepcopy(BASE), "steps": 3, "gradient_accumulation_steps": 2,
           "train_micro_batch_size_per_gpu": GLOBAL_MICRO}
    single = train(one, 1, save=tmp_path / "c", load=tmp_path / "a" / "step_00000002")
    np.testing.assert_allclose([h["loss"] for h in single[0].history], [h["loss"] for h in straight[0].history],
                               rtol=0, atol=1e-12)
    assert_same_state(tmp_path / "a", tmp_path / "c", atol=1e-12)
    assert read_checkpoint(tmp_path / "a").manifest["layout"]["grid"] == {"dp": 2, "tp": 1, "pp": 2}


@pytest.mark.mpi
@pytest.mark.timeout(180)
def test_mpirun_4_ranks_equals_in_process_and_the_report_and_estimator_agree(tmp_path, capsys):
    """Under ``mpirun -n 4`` (float32, 1F1B, m = 4): the same checkpoint as the in-process run; the
    report's layout rows equal the estimate on every rank, and ``python -m minidist.estimate --pp 2
    --dp 2 --zero 3`` prints the same ZeRO-3 rows."""
    cfg = config("1f1b", 4, steps=2, dtype="float32")
    path = tmp_path / "config.json"
    path.write_text(json.dumps(cfg))
    p = run_mpi(4, ["-m", "minidist.train", "--config", path, "--quiet", "--save", tmp_path / "mpi",
                    "--report", tmp_path / "r.json"], timeout=150)
    assert p.returncode == 0, p.stderr[-3000:]
    train(cfg, 4, save=tmp_path / "inproc")
    assert_same_state(tmp_path / "inproc", tmp_path / "mpi")
    assert read_checkpoint(tmp_path / "mpi").manifest["losses"] == read_checkpoint(tmp_path / "inproc").manifest["losses"]
    report = json.loads((tmp_path / "r.json").read_text())
    rows = report["layout"]["ranks"]
    assert len(rows) == 4
    for r in rows:
        assert r["model_states"] == r["model_states_estimate"] and \
            r["bytes_sent_per_step"] == r["bytes_sent_per_step_estimate"], r
    V = report["model"]["vocab_size"]
    argv = ["--layers", "4", "--hidden", "8", "--heads", "2", "--seq", "8", "--vocab", str(V), "--micro-batch", "2",
            "--dp", "2", "--pp", "2", "--zero", "3", "--precision", "fp32", "--micro-batches", "4", "--json"]
    assert estimate_main(argv) == 0
    (cli,) = json.loads(capsys.readouterr().out)["per_pipeline_rank"]
    by_pp = {r["coords"]["pp"]: r for r in rows}
    for e in cli["ranks"]:
        r = by_pp[e["pp_rank"]]
        assert {k: e["model_states"][k] for k in r["model_states"]} == r["model_states"]
        assert e["bytes_sent"]["total"] == r["bytes_sent_per_step"] - 2 * 8 * 2   # less the clipping norm's
    assert cli == estimate_3d(4, 8, 2, V, 8, 8, 2, 4, dp=2, pp=2, zero_stage=3)


def test_zero3_by_hand():
    """L = 4, h = 8, V = 65, T = s = 8, b = 2, m = 4, dp 2 × pp 2, 1f1b, fp32: rank 0 holds the root
    (wte + wpe) and blocks 0-1, rank 1 the root (wte + ln_f) and blocks 2-3; one unit per bucket."""
    r0, r1 = estimate_3d(4, 8, 2, 65, 8, 8, 2, 4, dp=2, pp=2, zero_stage=3)["ranks"]
    block = 12 * 8 ** 2 + 13 * 8                                  # 872 = 12h² + 13h
    S0 = -(-(65 * 8 + 8 * 8) // 2) + 2 * block // 2              # 292 + 872
    S1 = -(-(65 * 8 + 2 * 8) // 2) + 2 * block // 2              # 268 + 872
    assert (r0["shard"], r1["shard"]) == (S0, S1)
    for r, S in ((r0, S0), (r1, S1)):
        assert r["model_states"] == {"parameters": 4 * S, "gradients": 4 * S, "optimizer_states": 8 * S,
                                     "total": 16 * S}
        assert r["bytes_sent"]["data_parallel"] == (2 - 1) * (2 * 4 * S + S) * 4     # G = S: one chunk each
    v0 = estimate_3d(4, 8, 2, 65, 8, 8, 2, 4, dp=2, pp=2, zero_stage=3, schedule="zb_v")["ranks"][0]
    root = -(-(65 * 8 + 8 * 8 + 2 * 8) // 2)                     # both ends on rank 0: one root, two chunks
    assert v0["shard"] == root + 2 * block // 2
    assert v0["bytes_sent"]["data_parallel"] == (2 * 4 * (v0["shard"] + root) + v0["shard"]) * 4
    flat = estimate_3d(4, 8, 2, 65, 8, 8, 2, 4, dp=2, zero_stage=3)["ranks"][0]
    assert flat["bytes_sent"]["data_parallel"] == 3 * 4 * flat["shard"] * 4      # no pipeline: 3m(d−1)·S·w
    t0 = estimate_3d(4, 8, 2, 65, 8, 8, 2, 4, dp=2, tp=2, pp=2, zero_stage=3)["ranks"][0]   # tp slices, sharded
    assert t0["shard"] == (33 * 8 + 8 * 8) // 2 + 2 * (12 * 64 // 2 + 7 * 8 // 2 + 6 * 8) // 2    # 33 of 66 rows


def test_overlapped_dualpipe_pairs_are_refused_under_zero3():
    cfg = config("dualpipe_v", 4)
    cfg["parallel"]["overlap_f_b"] = True
    errors = dist.spawn(_error, 4, cfg, timeout=30)
    assert len(set(errors)) == 1 and errors[0].startswith("config key 'parallel.overlap_f_b'") and "ZeRO-3" in errors[0]


def _error(comm, cfg):
    from minidist.training.config import ConfigError, load_config
    try:
        load_config(copy.deepcopy(cfg), comm.size)
    except ConfigError as e:
        return str(e).split("] ", 1)[-1]
    return None


@pytest.mark.checkpointing
def test_full_recomputation_equals_one_rank_and_the_formula():
    """A block recomputed in B keeps the parameters its recomputation gathered for its backward,
    which follows at once: no more all-gathers than without recomputation. On zb_v the middle
    rank holds no root (its first unit is a block)."""
    extra = {"activation_checkpointing": {"granularity": "full", "num_layers": 1}}
    runs = dist.spawn(train_steps, 4, config("zb_v", 2, **extra), timeout=60)
    ref = train_steps({**copy.deepcopy(BASE), "gradient_accumulation_steps": 2,
                       "train_micro_batch_size_per_gpu": GLOBAL_MICRO, **extra})
    for r in runs:
        for step, params in enumerate(r["params"]):
            want = ref["params"][step]
            assert max(float(np.max(np.abs(params[k] - want[k])) / np.max(np.abs(want[k]))) for k in want) <= 1e-9
    est = estimate_for_config(runs[0]["trainer"].cfg, 4, runs[0]["trainer"].model_config.vocab_size)
    for r in runs:
        tr = r["trainer"]
        assert tr.history[-1]["bytes_sent"] == est["ranks"][tr.grid.coords["pp"]]["bytes_sent"]["total"]
        assert dp_bytes(tr) == r["expected_bytes_sent"] - tr.strategy.scalar_bytes()
    assert not est["notes"]
