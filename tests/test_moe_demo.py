"""The mixture-of-experts chapter (python -m minidist.demo --chapters moe) on 4 in-process ranks:
capacities and drops follow C = ⌈factor·T·k/E⌉, every all-to-all sends (ep − 1)/ep · E · C · h
elements, the load-balancing loss balances the experts, DualPipeV's overlap is bit-identical and
shorter by no more than its pairs hid, the figures are written, and the README quotes what it prints."""
import math
import pathlib
import re

import pytest
from _chapter import run_chapter

pytestmark = [pytest.mark.moe, pytest.mark.pipeline, pytest.mark.timeout(120)]

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"


def test_the_chapter_on_four_ranks_and_the_readme_quotes_it(tmp_path):
    from minidist.demo import moe as chapter
    r, printed = run_chapter(chapter.run, tmp_path)
    ro = r["routing"]
    for row in ro["rows"]:
        C = math.ceil(row["capacity_factor"] * ro["tokens"] * ro["k"] / chapter.E)
        assert row["capacity"] == C
        assert row["kept"] == [min(n, C) for n in row["load"]]
        assert row["dropped"] == sum(max(n - C, 0) for n in row["load"])
    assert ro["rows"][0]["dropped"] > 0 and ro["rows"][-1]["dropped"] == 0
    a2a = r["all_to_all"]
    assert a2a["bytes"] == [a2a["formula"]] and a2a["formula"] == 3 * (chapter.E // 4) * a2a["capacity"] * chapter.H * 4
    assert a2a["count"] == 4 * a2a["layers"]                 # two forward, two backward per MoE layer
    lb = r["load_balance"]
    last = chapter.LAST
    off, on = (lb[c] for c in chapter.AUX)
    assert sum(on["imbalance"][-last:]) < sum(off["imbalance"][-last:])
    assert sum(on["dropped"][-last:]) < sum(off["dropped"][-last:])
    ov = r["overlap"]
    assert ov["same"] and 0 < ov["saved"] <= ov["hidden"] <= ov["a2a"] + 1e-12
    lines = printed.splitlines()
    quoted = [x for x in lines if re.match(r"^ +[\d.]+ +\d+ +\[", x)]                 # the routing table
    quoted += [x for x in lines if x.startswith(("expert parallelism over", "DualPipeV, pipeline"))]
    quoted += [x for x in lines if re.match(r"^ +0(\.\d+)? +[\d.]+ +[\d.]+ +[\d.]+$", x)]   # load balance rows
    assert len(quoted) == len(chapter.FACTORS) + 2 + len(chapter.AUX)
    readme = README.read_text()
    for line in quoted:
        assert line in readme, f"the README's mixture-of-experts section is stale: {line!r}"
    for name in ("12_routing.png", "12_all_to_all_timeline.png", "12_load_balance.png", "12_dualpipe_overlap.png"):
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
