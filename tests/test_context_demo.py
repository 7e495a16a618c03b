"""The context-parallel chapter (python -m minidist.demo --chapters context) on 4 in-process ranks:
ring and Ulysses equal one rank with the formulas' bytes, zigzag balances the causal ring, every
sweep point's bytes equal the formula, activations per rank fall as 1/cp, training equals one
rank, the figures are written, and the README quotes what it prints."""
import pathlib
import re

import pytest

from minidist import distributed as dist

pytestmark = [pytest.mark.context, pytest.mark.timeout(120)]


def test_the_chapter_on_four_ranks_and_the_readme_quotes_it(tmp_path, capsys):
    from minidist.demo import context as chapter
    r = dist.spawn(chapter.run, 4, tmp_path, timeout=100)[0]
    printed = capsys.readouterr().out.splitlines()
    readme = (pathlib.Path(__file__).resolve().parents[1] / "README.md").read_text()
    assert r["softmax"]["error"] < 1e-14
    for row in r["equality"]:
        assert row["error"] < 1e-12 and row["bytes"] == row["formula"] > 0
        assert re.search(rf"^ +{row['cp']} +{row['algorithm']} +\S+ +{row['bytes']} +{row['formula']}$", readme, re.M)
    balance = {lay: max(t[lay]["time"] for t in r["balance"]) for lay in ("contiguous", "zigzag")}
    assert balance["zigzag"] < balance["contiguous"]
    assert len({sum(t["zigzag"]["work"]) for t in r["balance"]}) == 1                  # every rank alike
    assert all(r["sweep"][a]["bytes"] == r["sweep"][a]["formula"] for a in r["sweep"])
    for algorithm, by_cp in r["memory"]["by_cp"].items():
        assert all(held * cp == by_cp[1] for cp, held in by_cp.items()), (algorithm, by_cp)
    assert max(r["training"].values()) <= 1e-9
    quoted = [x for x in printed if x.startswith(("causal ring on", "activations per rank"))]
    quoted += [x for x in printed if re.match(r"^ +\d+ +\d+ +\d+ +[\d.]+ \(", x)]        # the sweep's rows
    assert len(quoted) == 2 + len(chapter.SEQS)
    for line in quoted:
        assert line in readme, f"the README's context-parallel section is stale: {line!r}"
    for name in ("13_zigzag_timeline.png", "13_ring_vs_ulysses.png", "13_activation_memory.png"):
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_on_three_ranks_the_chapters_with_fixed_layouts_run_on_the_ranks_that_fit(tmp_path, capsys):
    """The tour on 3 ranks: the context chapter runs on ranks 0 and 1 (its cuts need a power of
    two), the mixture-of-experts chapter (4 experts over 4 ranks, DualPipeV on 2 × 2) says it
    needs 4 ranks and skips itself; neither fails the tour."""
    from minidist.demo.__main__ import run_tour
    results = dist.spawn(run_tour, 3, ["moe", "context"], tmp_path, timeout=100)
    printed = capsys.readouterr().out
    assert "the mixture-of-experts chapter needs 4 ranks and the tour has 3: skipped" in printed
    assert "causal ring on 2 ranks" in printed and results[0]["moe"] == {}
    assert max(results[0]["context"]["training"].values()) <= 1e-9
    assert results[2]["context"] == {}                    # the rank outside the context chapter's two


def test_on_eight_ranks_the_context_chapter_runs_on_as_many_as_the_heads(tmp_path, capsys):
    """Ulysses gives each rank whole heads of the chapter's 4-head model, so on 8 ranks the
    chapter runs on the first 4 (it raised on cp = 8) and the other four sit it out."""
    from minidist.demo.__main__ import run_tour
    results = dist.spawn(run_tour, 8, ["context"], tmp_path, timeout=150)
    printed = capsys.readouterr().out
    assert "causal ring on 4 ranks" in printed
    assert max(results[0]["context"]["training"].values()) <= 1e-9
    assert all(r["context"] == {} for r in results[4:])
