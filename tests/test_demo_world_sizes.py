"""The chapters whose layouts fix their ranks at other world sizes than the tour's 4 (README:
"the chapters whose layout fixes their ranks run on the first ranks that fit"): on 3 and 8
in-process ranks the 3D chapter runs only layouts whose dp splits the global batch, each
equal to one rank, and the tensor and inference chapters run TP on the first ranks that fit."""
import re

import pytest
from _chapter import run_chapter

from minidist.demo import grid3d, inference, tensor_parallel

pytestmark = [pytest.mark.timeout(180)]


@pytest.mark.grid
def test_3d_layouts_split_the_global_batch():
    assert grid3d.batch_layouts(8) == [lay for lay in grid3d.layouts(8) if lay != (8, 1, 1)]
    assert grid3d.batch_layouts(4) == grid3d.layouts(4)                      # the tour's own world: all six
    assert grid3d.batch_layouts(3) == []                                     # DP 3 of 4 sequences; 3 ∤ 4 heads
    assert [grid3d.ranks_used(n) for n in (1, 2, 3, 4, 5, 6, 7, 8, 12)] == [0, 2, 2, 4, 4, 4, 4, 8, 8]


@pytest.mark.grid
@pytest.mark.parametrize("world, used", [(3, 2), (8, 8)])
def test_3d_chapter_at_another_world_size(tmp_path, world, used):
    res, text = run_chapter(grid3d.run, tmp_path, world=world)
    assert res["ranks_used"] == used
    layouts = [row["layout"] for row in res["layouts"]]
    assert layouts == grid3d.batch_layouts(used) and layouts
    for row in res["layouts"]:
        dp, tp, pp = row["layout"]
        assert dp * tp * pp == used == len(row["ranks"]) and grid3d.GLOBAL_MICRO % dp == 0
        assert row["max_rel_diff"] <= 1e-9, row["label"]                    # the same global batch as one rank
        for r in row["ranks"]:
            assert r["model_states_total"] == r["model_states_estimate"] > 0
            assert r["bytes_sent_steps"] == [r["bytes_sent_estimate"]] * grid3d.STEPS
    # the printed table: every |Δw| is rounding, every speed-up at most the ranks used
    table = text.split("all layouts, the most any rank holds or sends")[1].splitlines()[2:2 + len(layouts)]
    for line in table:
        speedup, diff = float(re.search(r"([\d.]+)×", line).group(1)), float(line.split()[-1])
        assert 0 < speedup <= used and diff <= 1e-9, line
    if world == 3:
        assert "the layouts run on the first 2 of the tour's 3 ranks" in text
    else:
        assert "DP 8 × TP 1 × PP 1 is not run" in text and "DP 8 × TP 1 × PP 1 (" not in text
    assert (tmp_path / "10_layouts.png").stat().st_size > 10_000


@pytest.mark.tensor
@pytest.mark.parametrize("world, labels", [(3, ["none", "TP 2", "TP 2 + SP"]),
                                           (8, ["none", "TP 2", "TP 2 + SP", "TP 4", "TP 4 + SP"])])
def test_tensor_chapter_runs_tp_on_the_first_ranks_that_fit(tmp_path, world, labels):
    res, text = run_chapter(tensor_parallel.run, tmp_path, world=world)
    assert [r["label"] for r in res["rows"]] == labels
    for r in res["rows"][1:]:
        assert r["measured"] == r["formula"] and r["tp_bytes"] == r["tp_bytes_formula"] > 0
        assert r["max_rel_diff"] <= 1e-9, r["label"]
    line = next(x for x in text.splitlines() if x.startswith("per layer per micro-batch, bytes sent by each rank: "))
    assert "TP 2: all_reduce" in line
    if world == 3:
        assert "TP 2 runs on the first 2 of the tour's 3 ranks" in text and "TP 4 is not run" in text


@pytest.mark.inference
@pytest.mark.parametrize("world, tps", [(3, [2]), (8, [2, 4])])
def test_inference_chapter_decodes_with_tp_on_the_first_ranks_that_fit(tmp_path, world, tps):
    res, text = run_chapter(inference.run, tmp_path, world=world)
    assert [r["t"] for r in res["tp"]] == tps
    for r in res["tp"]:
        assert r["same_tokens"] and r["bytes_per_decode_step"] == [r["bytes_formula"]]
        assert r["cache"]["measured"] == r["cache"]["formula"]
    if world == 3:
        assert "TP 2 decodes on the first 2 of the tour's 3 ranks" in text
        assert "TP 4 decoding is not run: it needs 4 ranks and the tour has 3" in text
