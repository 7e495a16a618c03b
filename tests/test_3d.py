"""3D parallelism (DP × TP × PP) on the one model trains like one rank on the same global batch.

In float64, DP2 × TP2 × PP2 on 8 in-process ranks — with DDP, ZeRO-1 and ZeRO-2 over the dp
group, with and without sequence parallelism, under every pipeline schedule, with dropout,
gradient accumulation and clipping — gives the one-rank losses and weights after every step
(relative ≤ 1e-9); in bf16 it stays within the mixed-precision tolerance of the one-rank bf16
run; bad layouts are refused on every rank, naming the key and the fix.
"""
import copy

import numpy as np
import pytest

from minidist import distributed as dist
from minidist.defaults import SCHEDULES
from minidist.parallel.grid import GridShape
from minidist.testing import train_steps
from _refusal import trainer_errors

pytestmark = [pytest.mark.grid, pytest.mark.tensor, pytest.mark.pipeline, pytest.mark.timeout(120)]

GLOBAL_MICRO = 4          # sequences per micro-step of the global batch
BASE = {"model": {"n_layer": 4, "n_embd": 16, "n_head": 4, "block_size": 8, "dropout": 0.1},
        "data": {"dataset": "english", "seq_len": 8}, "dtype": "float64", "steps": 2, "eval_iters": 1,
        "optimizer": {"type": "Adam", "params": {"lr": 1e-2}}}


def config(dp=1, tp=1, pp=1, schedule="1f1b", m=4, v=1, sp=False, zero=0, **extra):
    cfg = copy.deepcopy(BASE)
    cfg.update(train_micro_batch_size_per_gpu=GLOBAL_MICRO // dp, gradient_accumulation_steps=m,
               zero_optimization={"stage": zero},
               parallel={"tensor": tp, "pipeline": pp, "schedule": schedule, "virtual_stages": v,
                         "sequence_parallel": sp})
    cfg.update(extra)
    return cfg


_REFERENCE = {}


def reference(m=4, **extra):
    """One rank on the whole global batch, the same accumulation."""
    key = (m, repr(sorted(extra.items())))
    if key not in _REFERENCE:
        _REFERENCE[key] = train_steps(config(m=m, **extra))
    return _REFERENCE[key]


def rel_diff(a: dict, b: dict) -> float:
    assert set(a) == set(b)
    return max(float(np.max(np.abs(a[k] - b[k])) / np.max(np.abs(b[k]))) for k in b)


def global_losses(runs, shape: GridShape) -> list:
    """Per step, the global batch's loss: the mean over the dp replicas of what tp rank 0 of
    the last chunk's pipeline rank measured (the other ranks hold no loss; the V schedules
    put the last chunk on pipeline rank 0)."""
    pipeline = runs[0]["trainer"].pipeline
    last_pp = pipeline.schedule.stage_to_rank[-1] if pipeline is not None else 0
    last = [runs[shape.rank_of(dp=d, pp=last_pp)] for d in range(shape.dp)]
    return [float(np.mean([r["history"][k]["loss"] for r in last])) for k in range(len(runs[0]["history"]))]


def check_like_one_rank(runs, ref, shape, tol=1e-9):
    want = [h["loss"] for h in ref["history"]]
    got = global_losses(runs, shape)
    np.testing.assert_allclose(got, want, rtol=tol, atol=0)
    for rank, run in enumerate(runs):          # every rank's view of the whole model, every step
        for step, params in enumerate(run["params"]):
            d = rel_diff(params, ref["params"][step])
            assert d <= tol, f"rank {rank} {shape.coords(rank)} step {step}: relative difference {d:.2e}"
    assert abs(want[-1] - want[0]) > 1e-4      # the model really trained


def m_for(schedule):
    return 4                                   # every schedule runs 4 micro-batches on 2 pipeline ranks


@pytest.mark.parametrize("schedule", SCHEDULES)
def test_every_schedule_under_dp2_tp2_pp2_trains_like_one_rank(schedule):
    v = 2 if schedule == "interleaved_1f1b" else 1
    ref = reference(m_for(schedule))
    runs = dist.spawn(train_steps, 8, config(2, 2, 2, schedule, m_for(schedule), v, zero=1), timeout=60)
    check_like_one_rank(runs, ref, GridShape(8, tp=2, pp=2))


@pytest.mark.parametrize("zero,sp", [(0, False), (1, False), (2, False), (0, True), (1, True), (2, True)],
                         ids=["ddp", "zero1", "zero2", "ddp+sp", "zero1+sp", "zero2+sp"])
def test_zero_stages_and_sequence_parallel_under_3d_train_like_one_rank(zero, sp):
    runs = dist.spawn(train_steps, 8, config(2, 2, 2, "1f1b", 4, zero=zero, sp=sp), timeout=60)
    check_like_one_rank(runs, reference(4), GridShape(8, tp=2, pp=2))


def test_clipping_counts_each_weight_once_over_the_grid():
    """The global gradient norm under 3D is the one-rank norm: replicated parameters counted
    by tp rank 0 only, the last stage's copy of the tied embedding not at all (it is
    ``shared``). A small clip makes every step clip, so a wrong norm changes the weights."""
    clip = {"gradient_clipping": 0.05}
    ref = reference(4, **clip)
    runs = dist.spawn(train_steps, 8, config(2, 2, 2, "interleaved_1f1b", 4, v=2, zero=2, sp=True, **clip),
                      timeout=60)
    check_like_one_rank(runs, ref, GridShape(8, tp=2, pp=2))


@pytest.mark.parametrize("layout", [(1, 2, 2), (2, 1, 2), (2, 2, 1), (1, 1, 4), (1, 4, 1)],
                         ids=["tp2xpp2", "dp2xpp2", "dp2xtp2", "pp4", "tp4"])
def test_every_layout_of_four_ranks_trains_like_one_rank(layout):
    dp, tp, pp = layout
    runs = dist.spawn(train_steps, 4, config(dp, tp, pp, "1f1b", 4, zero=1 if dp > 1 else 0, sp=tp > 1),
                      timeout=60)
    check_like_one_rank(runs, reference(4), GridShape(4, tp=tp, pp=pp))


@pytest.mark.parametrize("fmt", ["bf16", "fp16"])
def test_mixed_precision_3d_stays_within_its_tolerance_of_one_rank(fmt):
    """16-bit formats round partial sums in other orders on other layouts, so they agree to the
    format's precision, not bit for bit. Measured in bf16: losses within 6e-6 relative, the
    weights within ‖Δw‖/‖w‖ = 0.7e-2 and 0.9e-2 after the two steps (bf16's unit roundoff is
    2^-8 = 0.4e-2, and Adam turns a tiny gradient's rounding into a step of lr); fp16 closer.
    Every rank of the grid takes the same loss-scale decisions as one rank."""
    mixed = {"dtype": "float32", fmt: {"enabled": True, **({"initial_scale_power": 12} if fmt == "fp16" else {})}}
    ref = reference(4, **mixed)
    runs = dist.spawn(train_steps, 8, config(2, 2, 2, "zb_h1", 4, zero=1, sp=True, **mixed), timeout=60)
    got = global_losses(runs, GridShape(8, tp=2, pp=2))
    np.testing.assert_allclose(got, [h["loss"] for h in ref["history"]], rtol=1e-3)
    for step, params in enumerate(runs[0]["params"]):    # the whole model: ‖Δw‖ / ‖w‖
        want = ref["params"][step]
        diff = np.sqrt(sum(np.sum((params[k] - want[k]) ** 2.0) for k in want))
        assert diff / np.sqrt(sum(np.sum(want[k] ** 2.0) for k in want)) <= 3e-2
    scales = [[h["loss_scale"] for h in r["history"]] for r in runs]
    assert all(s == [h["loss_scale"] for h in ref["history"]] for s in scales)


@pytest.mark.parametrize("world,change,key,words", [
    (6, {"parallel": {"tensor": 2, "pipeline": 2}}, "parallel",
     "world size 6 is not divisible by tensor × pipeline = 4"),
    (4, {"parallel": {"tensor": 2, "pipeline": 2}, "model": {"n_layer": 3}}, "model.n_layer",
     "3 layers do not split evenly into 2 pipeline chunks"),
    (8, {"parallel": {"tensor": 4, "pipeline": 2}, "model": {"n_head": 2, "n_embd": 16}}, "parallel.tensor",
     "n_head 2 is not divisible by parallel.tensor 4"),
    (8, {"parallel": {"tensor": 2, "pipeline": 2}, "train_batch_size": 6}, "train_batch_size",
     "data-parallel degree"),
    (4, {"parallel": {"pipeline": 2}, "zero_optimization": {"stage": 3, "overlap_comm": True}},
     "zero_optimization.overlap_comm", "ZeRO-3 reduce-scatters once per step"),
    (4, {"parallel": {"pipeline": 2}, "zero_optimization": {"stage": 2, "overlap_comm": True}},
     "zero_optimization.overlap_comm", "waits for the pipeline's flush"),
    (4, {"parallel": {"tensor": 2}, "distillation": {"teacher": {"steps": 1}, "teacher_ranks": 1}},
     "distillation.teacher_ranks", "leave 3 student ranks in a world of 4, which tensor × pipeline = 2 does not"),
], ids=["world", "layers", "heads", "batch", "zero3-overlap-pp", "zero2-overlap-pp",
        "distill-teacher-ranks-tp"])
def test_a_layout_that_does_not_divide_is_refused_on_every_rank(world, change, key, words):
    cfg = copy.deepcopy(BASE)
    for section, values in change.items():
        cfg[section] = {**cfg.get(section, {}), **values} if isinstance(values, dict) else values
    errors = trainer_errors(cfg, world)
    assert len(set(errors)) == 1, errors                  # every rank, the same message
    e = errors[0]
    assert e is not None and e.startswith(f"config key '{key}'") and words in e, e


def test_report_shows_measured_beside_the_estimate_for_the_runs_config(tmp_path):
    """``python -m minidist.train --report`` on DP2 × TP2 × PP2: every rank's model states and
    bytes sent per step equal minidist.estimate.grid3d's exactly; with compute-bound devices
    (tiny α, huge β) and blocks much wider than the vocabulary, the measured bubble is the
    schedule's theory (p−1)/(m+p−1) up to the first and last stages' extra work."""
    import json

    from minidist.train import main as train_main
    cfg = config(2, 2, 2, "1f1b", 8, zero=1, sp=True, steps=1, dtype="float32",
                 device={"flops": 1e9, "alpha": 1e-12, "beta": 1e15})
    cfg["model"] = {"n_layer": 4, "n_embd": 64, "n_head": 4, "block_size": 8}
    (tmp_path / "c.json").write_text(json.dumps(cfg))
    assert train_main(["--config", str(tmp_path / "c.json"), "--world-size", "8", "--report",
                       str(tmp_path / "r.json"), "--quiet"]) == 0
    layout = json.loads((tmp_path / "r.json").read_text())["layout"]
    assert layout["grid"] == {"dp": 2, "tp": 2, "pp": 2} and len(layout["ranks"]) == 8
    for r in layout["ranks"]:
        assert r["model_states"] == r["model_states_estimate"], r
        assert r["bytes_sent_per_step"] == r["bytes_sent_per_step_estimate"], r
    assert layout["bubble_fraction_theory"] == pytest.approx(1 / 9)
    assert layout["bubble_fraction"] == pytest.approx(1 / 9, abs=0.03)
