"""The report's formula rows for runs with experts beyond the composition walk's pairs
(tests/test_composition.py checks every MoE and EP cell): ZeRO-1 + EP with an expert group of
two ranks (fp16, clipping: every one-element all-reduce of the joint norm and verdict), the
parameter server with experts rooted per ep rank (a row no rank fits: "not modelled"), and
full recomputation of a MoE block under tensor parallelism (its tp bytes: "not modelled")."""
import pytest

from minidist import distributed as dist
from minidist.report import build_report, format_data_parallel, rank_report
from minidist.testing import train_steps
from minidist.training import composition as C
from test_composition import cell_config, formula_rows, merge

pytestmark = [pytest.mark.timeout(60)]


def config(names, world: int, **extra) -> dict:
    cfg, _ = cell_config(names)
    for n in names:
        cfg = merge(cfg, C.FEATURES[n].fragment)
    cfg = merge(cfg, extra)
    par = cfg["parallel"]
    cfg["train_micro_batch_size_per_gpu"] = max(1, 4 * par.get("tensor", 1) // world)
    return cfg


def report(cfg: dict, world: int):
    runs = dist.spawn(train_steps, world, cfg, timeout=40)
    for r in runs:
        r["trainer"].final, r["trainer"].wall_time = {}, 0.0
    return runs, build_report(runs[0]["trainer"], [rank_report(r["trainer"]) for r in runs])


def test_zero1_with_an_expert_group_of_two_ranks_fp16_and_clipping_every_rank_equals_the_row():
    runs, rep = report(config(("ZeRO-1", "EP", "fp16", "clipping"), 4), 4)
    assert runs[0]["trainer"].strategy.experts.world_size == 2              # grid.dp: the experts' group
    assert formula_rows(runs) == []
    f, printed = rep["data_parallel"]["formula"], format_data_parallel(rep)
    # the joint scalars: the norm over grid.dp_ep, grid.dp and grid.ep, the verdict over grid.dp_ep and the world
    assert f["scalar_all_reduce_bytes"] == 2 * 8 * ((4 - 1) + (2 - 1) + (2 - 1) + (4 - 1) + (4 - 1))
    line = next(x for x in printed.splitlines() if x.startswith("formula"))
    assert f"{rep['ranks'][0]['data_parallel']['bytes_sent_per_step']:>12}" in line


def test_the_parameter_server_rooting_experts_per_ep_rank_says_not_modelled():
    runs, rep = report(config(("parameter server", "EP"), 4), 4)
    f = rep["data_parallel"]["formula"]
    assert f["model_states"] is None and "root" not in f and "experts' parameter server" in f["not_modelled"]
    assert "formula: not modelled" in format_data_parallel(rep)


def test_full_recomputation_of_a_moe_block_under_tensor_parallelism_leaves_its_tp_bytes_unmodelled():
    runs, rep = report(config(("TP", "MoE", "full recompute"), 2), 2)
    assert rep["ranks"][0]["moe"]["recomputed_blocks"] == [0]
    assert all(r["tensor_parallel"]["bytes_sent_per_step_expected"] is None for r in rep["ranks"])
    assert formula_rows(runs) == []                         # the job-level row and the strategy's still exact
    tp_line = next(x for x in format_data_parallel(rep).splitlines() if x.startswith("TP bytes"))
    assert tp_line.split()[-2] == "-"


def test_a_pipeline_stage_without_experts_sends_the_experts_flag_and_norm_the_layout_counts():
    """Under PP × EP with MoE every 2nd block, stage 1 holds no expert but joins the experts'
    world-wide overflow flag (fp16) and their grid.mp norm (clipping): the per-rank layout
    estimate counts both on every rank, as measured."""
    cfg = config(("PP", "EP", "fp16", "clipping"), 4)
    assert cfg["model"]["moe"]["every_n_layers"] == 2
    runs, rep = report(cfg, 4)
    assert [r["trainer"].strategy.experts is None for r in runs] == [False, False, True, True]
    rows = rep["layout"]["ranks"]
    assert len(rows) == 4
    for row in rows:
        assert row["bytes_sent_per_step"] == row["bytes_sent_per_step_estimate"], row
