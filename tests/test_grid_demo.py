"""The demo chapter '3d' on 4 in-process ranks (and once under ``mpirun -n 4``): every DP × TP × PP
layout of 4 ranks holds and sends exactly what ``estimate_for_config`` says on every rank, trains
like one rank, measures its bubble near the theory; the rank map it draws is Megatron's order;
its figures are written."""
from pathlib import Path

import pytest
from _chapter import run_chapter
from _mpi import run_mpi

from minidist.demo import grid3d as chapter
from minidist.estimate.cli import main as estimate_main
from minidist.parallel.grid import GridShape

pytestmark = [pytest.mark.grid, pytest.mark.timeout(120)]

LAYOUTS = [(4, 1, 1), (2, 2, 1), (2, 1, 2), (1, 2, 2), (1, 4, 1), (1, 1, 4)]     # dp, tp, pp
SUMMARY = "all layouts, the most any rank holds or sends"
README = Path(__file__).resolve().parents[1] / "README.md"


@pytest.fixture(scope="module")
def result(tmp_path_factory):
    out = tmp_path_factory.mktemp("figures")
    res, text = run_chapter(chapter.run, out)
    return res, out, text


def test_every_layout_of_four_ranks_is_run():
    assert chapter.layouts(4) == LAYOUTS
    # on 8 ranks: tp 8 and pp 8 are left out, the model has 4 heads and 4 layers
    assert chapter.layouts(8) == [(8, 1, 1), (4, 2, 1), (4, 1, 2), (2, 2, 2), (2, 4, 1), (2, 1, 4), (1, 4, 2),
                                  (1, 2, 4)]


def test_measured_model_states_and_bytes_equal_the_estimate_on_every_rank(result):
    res, _, text = result
    assert [r["layout"] for r in res["layouts"]] == LAYOUTS
    for row in res["layouts"]:
        assert len(row["ranks"]) == 4
        for r in row["ranks"]:
            where = (row["label"], r["rank"])
            assert r["model_states_total"] == r["model_states_estimate"] > 0, where
            # every step sends the same bytes, and the estimate says how many
            assert r["bytes_sent_steps"] == [r["bytes_sent_estimate"]] * chapter.STEPS, where
            assert r["peak"] >= r["model_states_total"] and r["activations"] > 0, where
    # what the pipeline and the tensor split change: the ends of a pipeline hold more than its
    # middle (embeddings, head), tp 4 holds a quarter of every block
    pp4 = next(row for row in res["layouts"] if row["layout"] == (1, 1, 4))["ranks"]
    assert pp4[0]["model_states_total"] > pp4[1]["model_states_total"] == pp4[2]["model_states_total"]
    assert pp4[3]["model_states_total"] > pp4[1]["model_states_total"]
    for row in res["layouts"]:
        assert f"DP {row['layout'][0]} × TP {row['layout'][1]} × PP {row['layout'][2]}" in text
    assert SUMMARY in text


def test_every_layout_trains_like_one_rank(result):
    res, _, _ = result
    for row in res["layouts"]:
        assert row["max_rel_diff"] <= 1e-9, row["label"]


def test_bubble_and_step_time_against_the_theory(result):
    res, _, _ = result
    m = chapter.MICRO_STEPS
    rows = {row["layout"]: row for row in res["layouts"]}
    for (_, _, pp), row in rows.items():
        if pp == 1:
            assert row["bubble_measured"] is None
            continue
        assert row["bubble_theory"] == pytest.approx((pp - 1) / (m + pp - 1), abs=1e-12)
        # above the theory, by the last stage's extra work (LM head and loss): it is the busiest
        assert 0 < row["bubble_measured"] - row["bubble_theory"] < 0.05, row["label"]
        busy = row["stage_busy_ms"]
        assert busy[-1] > max(busy[:-1]), row["label"]
    # the compute-only estimate is the one-rank step split 4 ways, within 1%
    assert res["compute_only_ms"] == pytest.approx(res["reference_step_ms"] / 4, rel=0.01)
    # DP 4 is within 2% of it on this device; every other layout pays for messages or a bubble
    assert rows[(4, 1, 1)]["step_ms"] == pytest.approx(res["compute_only_ms"], rel=0.02)
    assert all(row["step_ms"] > rows[(4, 1, 1)]["step_ms"] for lay, row in rows.items() if lay != (4, 1, 1))
    # tp 4 holds the least and sends the most; the pure pipelines send the least
    most = {lay: {k: max(r[k] for r in row["ranks"]) for k in ("model_states_total", "bytes_sent")}
            for lay, row in rows.items()}
    assert min(most, key=lambda lay: most[lay]["model_states_total"]) == (1, 4, 1)
    assert max(most, key=lambda lay: most[lay]["bytes_sent"]) == (1, 4, 1)
    assert sorted(most, key=lambda lay: most[lay]["bytes_sent"])[:2] == [(1, 1, 4), (2, 1, 2)]


def test_rank_map_is_megatrons_order(result):
    res, _, _ = result
    shape = res["map_shape"]
    assert shape == GridShape(8, tp=2, pp=2)
    boxes = res["grid_map"]
    assert [b["rank"] for b in boxes] == list(range(8))
    for b in boxes:
        # rank = tp_rank + tp·(dp_rank + dp·pp_rank), written out here
        assert b["rank"] == b["tp"] + 2 * (b["dp"] + 2 * b["pp"])
        assert b["rank"] == shape.rank_of(dp=b["dp"], pp=b["pp"], tp=b["tp"])
        assert (b["col"], b["row"]) == (2 * b["pp"] + b["tp"], b["dp"])       # stages left to right
        assert b["heads"] == ("heads 0–1" if b["tp"] == 0 else "heads 2–3")
    assert len({(b["col"], b["row"]) for b in boxes}) == 8
    assert boxes[0]["stage"] == "wte, wpe, blocks 0–1" and boxes[7]["stage"] == "blocks 2–3, ln_f, head (= wte)"
    rank = res["map_rank"]
    assert (shape.group_of(rank, "tp"), shape.group_of(rank, "dp"), shape.group_of(rank, "pp")) == \
           ((2, 3), (1, 3), (3, 7))


def test_figures_are_written(result):
    _, out, _ = result
    for name in ("10_grid_map.png", "10_layouts.png"):
        assert (out / name).stat().st_size > 30_000


def _readme_block(starts: str) -> list:
    """The lines of the README's code block whose first line starts with ``starts``."""
    lines = README.read_text().splitlines()
    i = next(k for k, line in enumerate(lines) if line.startswith(starts))
    return lines[i:lines.index("```", i)]


def test_readme_quotes_the_chapters_summary(result):
    """The README's table is what the chapter prints (the last column, rounding ~1e-13, aside)."""
    _, _, text = result
    printed = text[text.index(SUMMARY):].splitlines()[1:8]
    assert [line.rsplit(None, 1)[0] for line in _readme_block("DP×TP×PP  model states")] == \
           [line.rsplit(None, 1)[0] for line in printed], \
        "the README's 3D table is stale: paste the summary of `python -m minidist.demo --chapters 3d`"


def test_readme_quotes_what_the_estimator_prints(capsys):
    block = _readme_block("$ python -m minidist.estimate --layers 4")
    assert estimate_main(block[0].split()[4:]) == 0          # after "$ python -m minidist.estimate"
    printed = capsys.readouterr().out.splitlines()
    quoted = [line for line in block[1:] if line != "..."]
    assert len(quoted) == 10                                  # the header, its rule, stages 0-3 × 2 ranks
    i = printed.index(quoted[0])
    assert printed[i:i + len(quoted)] == quoted, "the README's estimator table is stale: paste what the command prints"


@pytest.mark.mpi
def test_mpirun_prints_the_same_table_as_in_process_ranks(result, tmp_path):
    """Under ``mpirun -n 4`` every rank runs every collective and rank 0 prints the summary:
    the same bytes, memory, times and bubbles as the thread ranks."""
    _, _, text = result
    proc = run_mpi(4, ["-m", "minidist.demo", "--chapters", "3d", "--out", tmp_path], timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]

    def summary(s):              # the header and one line per layout
        return s[s.index(SUMMARY):].splitlines()[1:8]

    assert summary(proc.stdout) == summary(text)
    assert summary(text)[0].startswith("DP×TP×PP") and summary(text)[-1].startswith("1×1×4")
    assert (tmp_path / "10_layouts.png").exists()
