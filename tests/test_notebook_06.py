"""Execute notebooks/06_pipeline_schedules.ipynb and check what it prints: the schedules'
charts drawn to scale, the validator's refusals, every bubble against the formulas written
here, zb_v built for unequal pass times, the executor equal to one rank, b·s·h bytes per
message from the log, measured beside theory."""
import re

import pytest
from _notebook import NOTEBOOKS, count_images, run_notebook

pytestmark = [pytest.mark.pipeline, pytest.mark.notebook, pytest.mark.timeout(300)]

P, M = 4, 8
FORMULA = {"naive": (P - 1) / P, "gpipe": (P - 1) / (M + P - 1), "1f1b": (P - 1) / (M + P - 1),
           "interleaved_1f1b": (P - 1) / (2 * M + P - 1), "zb_h1": (P - 1) / (3 * M + P - 1),
           "zb_h2": (P - 1) / (3 * M + P - 1), "zb_v": (P - 1) / (6 * M + P - 1),
           "dualpipe_v": (P - 1) / (6 * M + P - 1)}
NUMBER = r"([\d.e+-]+)"


def test_notebook_06_runs_and_its_numbers_are_the_textbooks(tmp_path):
    text, outputs = run_notebook("06_pipeline_schedules.ipynb", workdir=tmp_path)
    # 1. the 1F1B chart: rank 0 starts with its p−1 = 3 warm-up forwards and one more before B0
    assert "rank 0 |F0 F1 F2 F3 .  ." in text
    assert "step 33 units (F = B = W = 1 per stage of L/p layers; a cell is 1 unit); bubble 0.273" in text
    assert "stage_to_rank [0, 1, 2, 3, 3, 2, 1, 0]" in text                       # zb_v's V
    # the charts to scale: ZB-V's half-size chunk passes make a shorter step than ZB-H1's
    assert "step 25.5 units (F = B = W = 1 per stage of L/p layers; a cell is 1/2 unit); bubble 0.059" in text
    assert "step 27 units (F = B = W = 1 per stage of L/p layers; a cell is 1 unit); bubble 0.111" in text
    # 2. the validator refuses both broken programs, naming what is wrong
    assert re.search(r"swapped F/B on rank 1: refused — .*deadlock", text)
    assert "a backward missing on rank 3: refused — broken: B of micro-batch 7 on chunk 3 is missing" in text
    # 3. per schedule: simulated = estimator = the formula, and over every (p, m) tried
    for name, want in FORMULA.items():
        row = re.search(rf"^\s+{name}\s+{NUMBER}\s+{NUMBER}\s+{NUMBER}\s+\[", text, re.M)
        assert row, name
        assert [float(x) for x in row.groups()] == pytest.approx([want] * 3, abs=1e-4), name
    agree = re.search(r"simulation = estimator = formula in (\d+) of (\d+) cases", text)
    assert agree and agree.group(1) == agree.group(2) == str(4 * 3 * 8)
    # unequal pass times: zb_v built for them never idles more than the hand-made order, never
    # less than the staircase (p−1)·T_F/2, and reaches it with W = 2F
    rows = re.findall(r"^\s+\(([\d., ]+)\)\s+" + r"\s+".join([NUMBER] * 3) + "$", text, re.M)
    assert len(rows) == 5
    for times, hand, built, stair in rows:
        assert float(stair) - 1e-9 <= float(built) <= float(hand) + 1e-9, times
    assert [r[1:] for r in rows if r[0] == "1, 1, 2"] == [("2.5", "1.5", "1.5")]
    # 4. the executor trains like one rank, in float64
    diffs = re.findall(rf"relative loss difference = {NUMBER}, max \|weight difference\| = {NUMBER}", text)
    assert len(diffs) == 4
    assert all(float(loss) <= 1e-9 and float(w) <= 1e-12 for loss, w in diffs)
    # 5. bytes between stages: b·s·h float64 elements per message, 2·m per boundary
    bsh = 2 * 7 * 8
    assert f"b·s·h = 2·7·8 = {bsh} elements = {bsh * 8} bytes in float64" in text
    assert f"rank 0: {M} messages of [{bsh * 8}] bytes, to ranks {{1: {M}}}" in text
    assert f"rank 1: {2 * M} messages of [{bsh * 8}] bytes, to ranks {{0: {M}, 2: {M}}}" in text
    assert f"rank 3: {M} messages of [{bsh * 8}] bytes, to ranks {{2: {M}}}" in text
    # 6. measured beside theory: theory is the formula, measured a little above it
    for name in ("1f1b", "zb_h1", "zb_v"):
        row = re.search(rf"^{name}\s+{NUMBER}\s+{NUMBER}\s+\[", text, re.M)
        theory, measured = (float(x) for x in row.groups())
        assert theory == pytest.approx(FORMULA[name], abs=1e-4)
        assert theory - 0.002 <= measured <= theory + 0.03, name
    assert "[4.0, 3.0, 2.0, 1.0] | [4.0, 3.0, 2.0, 1.0]" in text                 # 1F1B: min(p−r, m), measured
    assert "`pipeline_1f1b`" in (NOTEBOOKS / "06_pipeline_schedules.ipynb").read_text()    # the exercise cell
    assert count_images(outputs) == 1
