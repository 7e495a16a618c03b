"""The demo chapter 'checkpointing' on 4 in-process ranks: every stair of the activation
staircase it prints is Korthikanti et al. 2022's bytes per layer plus the engine's named extras
(and the estimator's), for none / selective / full, alone, TP 2 and TP 2 + SP; full costs one
more forward of the blocks; overlap saves time and changes no number; DDP reduces only in the
last micro-batch; its figures are written."""
from pathlib import Path

import pytest
from _chapter import run_chapter

from minidist.demo import checkpointing as chapter

pytestmark = [pytest.mark.checkpointing, pytest.mark.timeout(120)]

S, B, H, A, L = chapter.S, chapter.B, chapter.H, chapter.A, chapter.L
SBH = S * B * H


@pytest.fixture(scope="module")
def result(tmp_path_factory):
    out = tmp_path_factory.mktemp("figures")
    res, text = run_chapter(chapter.run, out)
    return res, out, text


def test_every_stair_is_korthikanti_plus_the_named_extras_and_the_table_says_so(result):
    res, _, text = result
    rows = {(r["layout"], r["granularity"]): r for r in res["layers"]}
    assert set(rows) == {(lay, g) for lay in chapter.LAYOUTS for g in chapter.GRANULARITIES}
    for (lay, g), r in rows.items():
        t, sp = chapter.LAYOUTS[lay]
        extras = (4 * SBH + 8 * S * B) / (t if sp else 1) if g != "full" else 0
        assert r["stairs"] == [r["formula"]] * L, (lay, g)                 # every block the same stair
        assert r["formula"] == r["korthikanti"] + extras == r["estimator"] + extras
        assert sum(r["stairs"]) == r["estimator_blocks"] + L * extras       # the staircase's top
        line = f"{lay:<10} {g:<10} {r['stairs'][0]:>9} {r['korthikanti']:>12.0f}"
        assert line in text, line
    # the paper's closed forms, by hand for s = 16, b = 2, h = 32, a = 4 (5as/h = 10)
    assert rows["one rank", "none"]["korthikanti"] == SBH * 44
    assert rows["TP 2", "none"]["korthikanti"] == SBH * (10 + 12 + 5)
    assert rows["TP 2 + SP", "selective"]["korthikanti"] == SBH * 34 / 2
    assert rows["TP 2", "full"]["stairs"][0] == 2 * SBH and rows["TP 2 + SP", "full"]["stairs"][0] == SBH


def test_methods_offload_and_partition_move_the_stairs_as_the_estimator_says(result):
    res, _, _ = result
    for p in res["policies"]:
        assert p["measured"] == p["estimator"] + p["extras"], p
    assert [p["checkpoints"] for p in res["policies"]] == [4, 2, 1, 1, 3]
    cpu = res["offload"]["one rank, full + cpu_checkpointing"]
    assert cpu["stairs"] == [0] * L and cpu["host_stairs"] == [2 * SBH] * L
    part = res["offload"]["TP 2, full + partition_activations"]
    assert part["stairs"] == [SBH] * L and part["host_stairs"] == [0] * L


def test_full_costs_one_more_forward_of_the_blocks_and_the_estimator_counts_the_matmuls(result):
    res, _, text = result
    c = res["costs"]
    assert c["none"]["extra_flops"] == 0 and c["none"]["recompute_flops"] == 0
    assert c["full"]["extra_flops"] == c["full"]["recompute_flops"] == c["blocks_forward_flops"] > 0
    assert 0 < c["selective"]["extra_flops"] < c["full"]["extra_flops"]
    for g in ("selective", "full"):
        assert c[g]["recompute_matmul_flops"] == c[g]["estimate_recompute"] > 0
        assert c[g]["extra_us"] > 0
    # the blocks' matmul weights once more: 2·N·D of the recomputed matmuls, the rest is attention's QKᵀ and PV
    assert c["full"]["recompute_matmul_flops"] - c["blocks_matmul_per_pass"] == c["selective"]["recompute_matmul_flops"]
    # cpu_checkpointing: the same FLOPs; each block's h2d copy (2sbh over the host link) waits on the critical path
    cpu = c["full + cpu_checkpointing"]
    assert cpu["flops"] == c["full"]["flops"]
    assert cpu["step_us"] - c["full"]["step_us"] == pytest.approx(L * 2 * SBH / chapter.DEVICE["host_bandwidth"] * 1e6)
    assert f"{c['full']['flops']:>11,} {c['full']['extra_flops']:>10,}" in text


def test_overlap_saves_time_and_changes_no_number(result):
    res, _, text = result
    o = res["overlap"]
    for name in ("ddp", "zero3", "tp", "tp+sp"):
        assert o[name]["identical"], name
        assert o[name]["saved_us"] > 0 and o[name]["on_us"] < o[name]["off_us"], name
    for name in ("tp", "tp+sp"):                       # at most the TP collectives' time is hidden
        assert o[name]["saved_us"] <= o[name]["tp_comm_us"]
    assert "bit-identical: True" in text


def test_ddp_reduces_only_in_the_last_micro_batch(result):
    res, _, _ = result
    d = res["overlap"]["ddp"]
    k = chapter.MICRO_BATCHES
    assert d["sent"][:k - 1] == [0] * (k - 1)                        # no_sync(): not one message
    assert d["sent"][-1] == d["expected_bytes"] > 0                    # then the step's one reduction
    last = d["spans"][-1]
    assert len(d["all_reduces"]) > 1                                   # several buckets
    assert all(t0 >= last[0] for t0, _ in d["all_reduces"])
    assert any(t0 < last[1] for t0, _ in d["all_reduces"])             # overlap_comm: under that backward


def test_figures_are_written(result):
    res, out, _ = result
    for name in ("07_activation_staircase.png", "07_recompute_timeline.png", "07_overlap_timelines.png"):
        assert (out / name).stat().st_size > 20_000, name
    assert len(res["files"]) == 3


README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_quotes_what_the_chapter_prints(result):
    """The README's tables are the chapter's output, and its percentages are the chapter's times."""
    res, _, text = result
    lines = README.read_text().splitlines()
    i = next(k for k, line in enumerate(lines) if line.startswith("layout     granularity  measured"))
    quoted = [line for line in lines[i:lines.index("```", i)] if line]
    printed = text.splitlines()
    stale = [line for line in quoted if line not in printed]
    assert len(quoted) > 20 and not stale, \
        f"the README's checkpointing tables are stale ({stale[:1]}): paste `python -m minidist.demo --chapters checkpointing`"
    c = res["costs"]
    full, selective = (100 * c[g]["extra_us"] / c["none"]["step_us"] for g in ("full", "selective"))
    assert f"(+{full:.0f}% time here), selective {selective:.1f}%" in " ".join(lines)
